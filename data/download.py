"""Optional: download a real text corpus (for learners who are online).

The course never needs this: it ships its own synthetic corpus in
``data/corpus/``.  But once a model trains on the synthetic stories, it is
fun to try real text, so this module fetches a few well-known small corpora,
verifies their checksums and writes them atomically (a half-finished download
never appears under the final name).

Command line::

    python -m data.download --list
    python -m data.download tinyshakespeare [--dest PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
DEFAULT_DEST_DIR = DATA_DIR / "downloads"
OFFLINE_HINT = "No network? The course ships its own corpus in data/corpus/; this download is optional."
CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class KnownCorpus:
    """A corpus we know how to fetch.  ``sha256=None`` means "not pinned yet"."""

    name: str
    url: str
    filename: str
    sha256: str | None
    description: str


KNOWN_CORPORA = {
    "tinyshakespeare": KnownCorpus(
        name="tinyshakespeare",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        filename="tinyshakespeare.txt",
        # Not pinned: we do not want to write down a hash we have not verified
        # ourselves.  download() prints the computed hash; once checked against a
        # trusted source, paste it here.
        sha256=None,
        description="About 1 MB of Shakespeare plays (Karpathy's char-rnn dataset).",
    ),
}


class DownloadError(RuntimeError):
    """The file could not be fetched (network down, server error, bad URL)."""


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, *, timeout: float = 30) -> Path:
    """Fetch ``url`` (http, https or file://) to ``dest`` and return ``dest``.

    The data goes to a temporary file next to ``dest`` and is renamed into
    place only once it is complete and its sha256 matches, so ``dest`` is
    never a partial or wrong file.  With ``sha256=None`` the computed hash is
    printed for the user to check.

    Raises ``DownloadError`` if the URL cannot be read and ``ValueError`` on
    a checksum mismatch (the temporary file is deleted in both cases).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            actual = fetch_into(url, out, timeout)
        check_sha256(url, expected=sha256, actual=actual)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fetch_into(url: str, out, timeout: float) -> str:
    """Stream ``url`` into the open binary file ``out``; return the sha256 of what was read."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"could not download {url}: the server answered HTTP {exc.code} ({exc.reason}). "
                            f"The file may have moved. {OFFLINE_HINT}") from exc
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"could not download {url}: {reason}. {OFFLINE_HINT}") from exc
    return digest.hexdigest()


def check_sha256(url: str, *, expected: str | None, actual: str) -> None:
    """Raise ValueError on a mismatch; with no expected hash, print the actual one."""
    if expected is None:
        print(f"sha256 of {url}:\n  {actual}\n"
              "No checksum is registered for this file, so it was not verified. Compare the hash "
              "with a trusted source before relying on it (and pin it in data/download.py).")
        return
    if actual != expected.lower():
        raise ValueError(f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}. "
                         "The file was not saved. Try again; if it keeps happening the file has "
                         "changed upstream or is being corrupted, so check the source before updating the hash.")


def download_known(name: str, dest: str | os.PathLike | None = None, *, timeout: float = 30) -> Path:
    """Download one of ``KNOWN_CORPORA`` by name (default destination: data/downloads/)."""
    if name not in KNOWN_CORPORA:
        known = ", ".join(sorted(KNOWN_CORPORA))
        raise KeyError(f"unknown corpus {name!r}; known corpora: {known}")
    entry = KNOWN_CORPORA[name]
    return download(entry.url, dest or DEFAULT_DEST_DIR / entry.filename, entry.sha256, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.download", description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?", help="corpus to download (see --list)")
    parser.add_argument("--dest", help="where to save it (default: data/downloads/<file>)")
    parser.add_argument("--list", action="store_true", help="list the known corpora")
    parser.add_argument("--timeout", type=float, default=30, help="seconds to wait for the server")
    args = parser.parse_args(argv)
    if args.list or not args.name:
        for entry in KNOWN_CORPORA.values():
            print(f"{entry.name:20} {entry.description}\n{'':20} {entry.url}")
        return 0 if args.list else 2
    try:
        path = download_known(args.name, args.dest, timeout=args.timeout)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    except (DownloadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"saved {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
