"""mmcore.multimodal.media: every input form of images, every source, and every refusal."""

import base64
import http.server
import io
import struct
import threading
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos

from mmcore.multimodal.media import fetch_url, load_image


@pytest.fixture(scope="module")
def astronaut():
    return photos.astronaut()


def encode(array, fmt, **save_kwargs):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def png_header_only(width, height):
    """A valid PNG signature + IHDR claiming width x height, with a tiny IDAT."""

    def chunk(tag, payload):
        return (
            struct.pack(">I", len(payload))
            + tag
            + payload
            + struct.pack(">I", zlib.crc32(tag + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


# --- in-memory images ---------------------------------------------------------------------------


def test_pil_rgb_passes_through(astronaut):
    img = load_image(Image.fromarray(astronaut))
    assert img.mode == "RGB" and img.size == (512, 512)
    np.testing.assert_array_equal(np.asarray(img), astronaut)


def test_pil_modes_become_rgb():
    cat = photos.chelsea()
    gray = load_image(Image.fromarray(cat).convert("L"))
    assert gray.mode == "RGB"
    channels = np.asarray(gray)
    np.testing.assert_array_equal(channels[..., 0], channels[..., 2])
    rgba = np.dstack([cat, np.full(cat.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0  # transparent corner
    out = np.asarray(load_image(Image.fromarray(rgba, "RGBA")))
    assert (out[:10, :10] == 255).all(), "transparent pixels are composited on white"
    np.testing.assert_array_equal(out[20:, 20:], cat[20:, 20:])


def test_16_bit_and_float_images_are_scaled_not_clipped():
    camera = photos.camera()  # 8-bit grayscale photo
    sixteen = camera.astype(np.uint16) * 257  # the same picture at 16 bits
    png = io.BytesIO()
    Image.fromarray(sixteen).save(png, "PNG")
    out = np.asarray(load_image(png.getvalue()))
    np.testing.assert_array_equal(out[..., 0], camera)
    floats = Image.fromarray(camera.astype(np.float32) / 255.0, "F")
    np.testing.assert_array_equal(np.asarray(load_image(floats))[..., 1], camera)
    with pytest.raises(ValueError, match="mode F"):
        load_image(Image.fromarray(np.full((2, 2), 3.0, np.float32), "F"))


@pytest.mark.parametrize("layout", ["hwc3", "hw", "hwc1", "hwc4"])
def test_numpy_layouts(layout):
    coffee = photos.coffee()
    gray = coffee[..., 1]
    arrays = {
        "hwc3": (coffee, coffee),
        "hw": (gray, np.dstack([gray] * 3)),
        "hwc1": (gray[..., None], np.dstack([gray] * 3)),
        "hwc4": (np.dstack([coffee, np.full(gray.shape, 255, np.uint8)]), coffee),
    }
    array, expected = arrays[layout]
    img = load_image(array)
    assert img.mode == "RGB" and img.size == (600, 400)
    np.testing.assert_array_equal(np.asarray(img), expected)


def test_numpy_non_contiguous_view(astronaut):
    np.testing.assert_array_equal(np.asarray(load_image(astronaut[::2, ::2])), astronaut[::2, ::2])


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), "must be uint8"),
        (np.zeros((4, 4, 5), np.uint8), "1, 3 or 4 channels"),
        (np.zeros((2, 4, 4, 3), np.uint8), "got shape"),
        (np.zeros((0, 4, 3), np.uint8), "no pixels"),
    ],
)
def test_numpy_errors(array, message):
    with pytest.raises(ValueError, match=message):
        load_image(array)


def test_torch_chw_uint8_and_float(astronaut):
    chw = torch.from_numpy(astronaut).permute(2, 0, 1)
    np.testing.assert_array_equal(np.asarray(load_image(chw)), astronaut)
    as_float = chw.float() / 255.0
    np.testing.assert_array_equal(np.asarray(load_image(as_float)), astronaut)
    gray = torch.rand(8, 6)
    expected = (gray * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(np.asarray(load_image(gray))[..., 0], expected)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (torch.full((3, 4, 4), 1.5), r"finite values in \[0, 1\]"),
        (torch.full((3, 4, 4), float("nan")), "finite"),
        (torch.zeros((3, 4, 4), dtype=torch.int64), "uint8 or float"),
        (torch.zeros((1, 3, 4, 4)), "CHW or HW"),
    ],
)
def test_torch_errors(tensor, message):
    with pytest.raises(ValueError, match=message):
        load_image(tensor)


def test_unknown_type_is_refused():
    with pytest.raises(ValueError, match="type int"):
        load_image(42)


def test_max_pixels_applies_to_every_form(astronaut):
    for obj in (astronaut, Image.fromarray(astronaut), encode(astronaut, "PNG")):
        with pytest.raises(ValueError, match="512x512 = 262144 pixels, more than max_pixels=1000"):
            load_image(obj, max_pixels=1000)


# --- encoded bytes and data URLs ----------------------------------------------------------------


def test_png_bytes_are_lossless(astronaut):
    np.testing.assert_array_equal(np.asarray(load_image(encode(astronaut, "PNG"))), astronaut)


def test_jpeg_bytes_decode_close():
    cat = photos.chelsea()
    img = np.asarray(load_image(encode(cat, "JPEG", quality=95)))
    assert img.shape == cat.shape
    assert np.abs(img.astype(int) - cat).mean() < 3


def test_data_url(astronaut):
    url = "data:image/png;base64," + base64.b64encode(encode(astronaut, "PNG")).decode()
    np.testing.assert_array_equal(np.asarray(load_image(url)), astronaut)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("data:image/png;base64,@@@not-base64@@@", "invalid base64"),
        ("data:text/plain;base64,aGVsbG8=", "MIME type 'text/plain', expected image"),
        ("data:image/png,rawbytes", "must be base64-encoded"),
        ("data:image/png;base64", "malformed data URL"),
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", "not in a known image format"),
    ],
)
def test_bad_data_urls(url, message):
    with pytest.raises(ValueError, match=message):
        load_image(url)


def test_corrupt_png_bytes(astronaut):
    png = bytearray(encode(astronaut, "PNG"))
    mid = len(png) // 2
    png[mid : mid + 64] = bytes(64)
    with pytest.raises(ValueError, match="PNG image data is corrupt or truncated"):
        load_image(bytes(png))


def test_truncated_jpeg():
    jpeg = encode(photos.coffee(), "JPEG")
    with pytest.raises(ValueError, match="JPEG image data is corrupt or truncated"):
        load_image(jpeg[: len(jpeg) // 2])


def test_empty_and_garbage_bytes():
    with pytest.raises(ValueError, match="empty"):
        load_image(b"")
    with pytest.raises(ValueError, match="not in a known image format"):
        load_image(b"GIF? no, just text" * 4)


def test_decompression_bomb_refused_from_header():
    with pytest.raises(ValueError, match="refused before decoding"):
        load_image(png_header_only(100_000, 100_000))
    # Under Pillow's own limit but over ours: our check fires before any pixel is decoded
    # (the pixel data here is far too short, so decoding would report truncation instead).
    with pytest.raises(ValueError, match=r"9000x9000 = 81000000 pixels, more than max_pixels"):
        load_image(png_header_only(9000, 9000))


# --- local files --------------------------------------------------------------------------------


@pytest.fixture
def media_dir(tmp_path, astronaut):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "astronaut.png").write_bytes(encode(astronaut, "PNG"))
    (tmp_path / "secret.png").write_bytes(encode(photos.coffee(), "PNG"))
    return allowed


def test_local_path_and_file_url(media_dir, astronaut):
    path = media_dir / "astronaut.png"
    for obj in (str(path), path, "astronaut.png", path.as_uri()):
        img = load_image(obj, allowed_local_media_path=str(media_dir))
        np.testing.assert_array_equal(np.asarray(img), astronaut)


def test_local_files_refused_without_allowed_dir(media_dir):
    with pytest.raises(ValueError, match="local media is disabled"):
        load_image(str(media_dir / "astronaut.png"))


@pytest.mark.parametrize(
    "relative", ["../secret.png", "sub/../../secret.png", "{allowed}/../secret.png"]
)
def test_dotdot_traversal_refused(media_dir, relative):
    path = relative.format(allowed=media_dir)
    with pytest.raises(ValueError, match="outside the allowed media directory") as err:
        load_image(path, allowed_local_media_path=str(media_dir))
    assert "secret.png" in str(err.value)
    # The same escape as a file:// URL with ".." in its path.
    url = "file://" + str(media_dir) + "/../secret.png"
    with pytest.raises(ValueError, match="outside the allowed media directory"):
        load_image(url, allowed_local_media_path=str(media_dir))


def test_symlink_out_of_allowed_dir_refused(media_dir):
    link = media_dir / "innocent.png"
    link.symlink_to(media_dir.parent / "secret.png")
    with pytest.raises(ValueError, match="innocent.png.*resolves to .*secret.png.*outside"):
        load_image(str(link), allowed_local_media_path=str(media_dir))
    # A symlink that stays inside the directory is fine.
    inside = media_dir / "alias.png"
    inside.symlink_to(media_dir / "astronaut.png")
    assert load_image(str(inside), allowed_local_media_path=str(media_dir)).size == (512, 512)


def test_missing_file_directory_and_remote_file_url(media_dir):
    with pytest.raises(ValueError, match="does not exist"):
        load_image("nope.png", allowed_local_media_path=str(media_dir))
    (media_dir / "sub").mkdir()
    with pytest.raises(ValueError, match="not a regular file"):
        load_image("sub", allowed_local_media_path=str(media_dir))
    with pytest.raises(ValueError, match="remote host 'evil.example'"):
        load_image("file://evil.example/etc/passwd", allowed_local_media_path=str(media_dir))
    with pytest.raises(ValueError, match="unsupported URL scheme"):
        load_image("ftp://example.com/a.png")


# --- http(s) ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(astronaut):
    png = encode(astronaut, "PNG")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            port = self.server.server_address[1]
            if self.path == "/astronaut.png":
                self.send_response(200)
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)
            elif self.path.startswith("/redirect-to-"):
                host = self.path.removeprefix("/redirect-to-")
                self.send_response(302)
                self.send_header("Location", f"http://{host}:{port}/astronaut.png")
                self.end_headers()
            else:
                self.send_error(404)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", len(png)
    httpd.shutdown()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_http_from_allowed_host(server, astronaut):
    base, _ = server
    img = load_image(f"{base}/astronaut.png", allowed_domains=["127.0.0.1"])
    np.testing.assert_array_equal(np.asarray(img), astronaut)
    redirected = load_image(f"{base}/redirect-to-127.0.0.1", allowed_domains=["127.0.0.1"])
    assert redirected.size == (512, 512)


def test_http_refusals(server):
    base, size = server
    with pytest.raises(ValueError, match="host '127.0.0.1' is not allowed"):
        load_image(f"{base}/astronaut.png")
    with pytest.raises(ValueError, match="host 'localhost' is not allowed"):
        fetch_url(f"{base}/redirect-to-localhost", ["127.0.0.1"], 10**8, 5.0)
    with pytest.raises(ValueError, match=f"declares {size} bytes, more than the limit of 1000"):
        fetch_url(f"{base}/astronaut.png", ["127.0.0.1"], 1000, 5.0)
    with pytest.raises(ValueError, match="HTTP 404"):
        fetch_url(f"{base}/missing", ["127.0.0.1"], 10**8, 5.0)
