#include "bench_args.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace mmcore::bench {

namespace {

bool parse_int(const std::string& text, int64_t* out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

}  // namespace

void BenchArgs::add_int(const std::string& name, int64_t* value, const std::string& help) {
  options_.push_back({name, Kind::kInt, value, help + " (default " + std::to_string(*value) + ")"});
}

void BenchArgs::add_double(const std::string& name, double* value, const std::string& help) {
  std::ostringstream text;
  text << help << " (default " << *value << ")";
  options_.push_back({name, Kind::kDouble, value, text.str()});
}

void BenchArgs::add_int_list(const std::string& name, std::vector<int64_t>* values,
                             const std::string& help) {
  std::string defaults;
  for (int64_t v : *values) defaults += (defaults.empty() ? "" : ",") + std::to_string(v);
  options_.push_back({name, Kind::kIntList, values, help + " (default " + defaults + ")"});
}

void BenchArgs::add_flag(const std::string& name, bool* value, const std::string& help) {
  options_.push_back({name, Kind::kFlag, value, help});
}

bool BenchArgs::parse_value(const Option& option, const std::string& text) {
  switch (option.kind) {
    case Kind::kInt:
      return parse_int(text, static_cast<int64_t*>(option.target));
    case Kind::kDouble: {
      char* end = nullptr;
      errno = 0;
      const double v = std::strtod(text.c_str(), &end);
      if (text.empty() || errno != 0 || *end != '\0') return false;
      *static_cast<double*>(option.target) = v;
      return true;
    }
    case Kind::kIntList: {
      std::vector<int64_t> values;
      std::stringstream stream(text);
      std::string item;
      while (std::getline(stream, item, ',')) {
        int64_t v = 0;
        if (!parse_int(item, &v)) return false;
        values.push_back(v);
      }
      if (values.empty()) return false;
      *static_cast<std::vector<int64_t>*>(option.target) = values;
      return true;
    }
    case Kind::kFlag:
      return false;
  }
  return false;
}

void BenchArgs::parse(int argc, char** argv) const {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      print_usage(stdout);
      std::exit(0);
    }
    if (arg.rfind("--", 0) != 0) fail("unexpected argument '" + arg + "'");
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    const Option* option = nullptr;
    for (const Option& o : options_) {
      if (o.name == name) option = &o;
    }
    if (option == nullptr) fail("unknown flag --" + name);
    if (option->kind == Kind::kFlag) {
      if (has_value) fail("--" + name + " takes no value");
      *static_cast<bool*>(option->target) = true;
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) fail("--" + name + " needs a value");
      value = argv[++i];
    }
    if (!parse_value(*option, value)) fail("bad value '" + value + "' for --" + name);
  }
}

void BenchArgs::require(bool ok, const std::string& message) const {
  if (!ok) fail(message);
}

void BenchArgs::fail(const std::string& message) const {
  std::fprintf(stderr, "%s: error: %s\n", program_.c_str(), message.c_str());
  print_usage(stderr);
  std::exit(2);
}

void BenchArgs::print_usage(std::FILE* stream) const {
  std::fprintf(stream, "usage: %s [flags]\n%s\n\nflags:\n", program_.c_str(), description_.c_str());
  for (const Option& o : options_) {
    const char* metavar = o.kind == Kind::kFlag ? "" : o.kind == Kind::kIntList ? " N,N" : " N";
    std::fprintf(stream, "  --%s%s\n      %s\n", o.name.c_str(), metavar, o.help.c_str());
  }
  std::fprintf(stream, "  --help\n      print this message\n");
}

}  // namespace mmcore::bench
