"""Where an `image_url` may point: the server's media policy.

data: URIs are always accepted (messages.normalize decodes them). http(s) URLs are
fetched only with --allow-remote-media, with a byte cap and a timeout. Local paths
and file:// URLs are read only when they resolve (symlinks followed) inside
--media-dir. Everything else is refused as bad input.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from minicpmv_edge.errors import InputError, MediaError


@dataclass(frozen=True)
class MediaPolicy:
    allow_remote: bool = False
    media_dir: Path | None = None
    remote_max_bytes: int = 20 << 20
    remote_timeout_s: float = 10.0

    def resolve(self, url: str):
        """An image_url that is not a data: URI -> bytes or a Path for media.load_image."""
        if "\x00" in url:
            raise InputError("image_url contains a NUL character")
        try:
            scheme = urllib.parse.urlsplit(url).scheme.lower()
        except ValueError as exc:  # e.g. http://[::1/x.png: "Invalid IPv6 URL"
            raise InputError(f"image_url is not a valid URL ({exc})") from None
        if scheme in ("http", "https"):
            if not self.allow_remote:
                raise InputError("remote image URLs are disabled on this server (start it with --allow-remote-media)")
            return self._fetch(url)
        if scheme == "file" or scheme == "" or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):
            return self._local(url)
        raise InputError(f"unsupported image URL scheme {scheme!r}; use a data: URI")

    def _local(self, url: str) -> Path:
        if self.media_dir is None:
            raise InputError("local image paths are disabled on this server (start it with --media-dir)")
        raw = urllib.parse.unquote(urllib.parse.urlsplit(url).path) if url.lower().startswith("file:") else url
        if "\x00" in raw:
            raise InputError("image path contains a NUL character")
        root = self.media_dir.resolve()
        p = Path(raw)
        try:  # inside --media-dir first: whether a file outside it exists is none of the client's business
            path = (p if p.is_absolute() else root / p).resolve()
        except (RuntimeError, OSError, ValueError):  # a symlink loop, a name too long, ...
            raise InputError("image path cannot be resolved (a symlink loop?)") from None
        if not path.is_relative_to(root):
            raise InputError("image path is outside the server's --media-dir")
        return path

    def _fetch(self, url: str) -> bytes:
        req = urllib.request.Request(url, headers={"User-Agent": "minicpmv-edge"})
        try:
            with urllib.request.urlopen(req, timeout=self.remote_timeout_s) as resp:  # noqa: S310 - scheme checked
                length = resp.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > self.remote_max_bytes:
                    raise MediaError(f"remote image is {int(length)} bytes, over the cap of {self.remote_max_bytes}")
                data = resp.read(self.remote_max_bytes + 1)
        except MediaError:
            raise
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise MediaError(f"cannot fetch remote image ({type(exc).__name__}: {str(exc)[:120]})") from None
        if len(data) > self.remote_max_bytes:
            raise MediaError(f"remote image is over the cap of {self.remote_max_bytes} bytes")
        return data
