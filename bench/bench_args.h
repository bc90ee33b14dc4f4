#pragma once
// Command-line flags of the benchmark binaries: `--name value` or `--name=value`, boolean flags
// without a value, --help. A bad flag or value prints the problem and the usage and exits with 2.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace mmcore::bench {

class BenchArgs {
 public:
  BenchArgs(std::string program, std::string description)
      : program_(std::move(program)), description_(std::move(description)) {}

  void add_int(const std::string& name, int64_t* value, const std::string& help);
  void add_double(const std::string& name, double* value, const std::string& help);
  // Comma-separated integers, e.g. --running 256,1024.
  void add_int_list(const std::string& name, std::vector<int64_t>* values, const std::string& help);
  void add_flag(const std::string& name, bool* value, const std::string& help);

  // Parses argv into the registered values; exits 0 after --help, 2 on an error.
  void parse(int argc, char** argv) const;
  // Exits with 2 and `message` (plus the usage) unless `ok`.
  void require(bool ok, const std::string& message) const;

 private:
  enum class Kind { kInt, kDouble, kIntList, kFlag };
  struct Option {
    std::string name;
    Kind kind;
    void* target;
    std::string help;
  };

  [[noreturn]] void fail(const std::string& message) const;
  void print_usage(std::FILE* stream) const;
  static bool parse_value(const Option& option, const std::string& text);

  std::string program_;
  std::string description_;
  std::vector<Option> options_;
};

}  // namespace mmcore::bench
