"""Image folders, `root/split/class/*.{png,jpg,jpeg}`, as uint8 arrays: decoded once, then cached.

Labels follow the sorted class-folder names (every split must have the same ones) and files are
sorted within a class, so arrays and labels are the same on every machine. Hidden entries (names
starting with '.') and files with other extensions are skipped. Images are decoded with PIL to
RGB, or to one channel when every image is grayscale, in one worker process per core. Measured on
a 2-core machine with CIFAR-10's 60,000 32x32 JPEGs: 9.1 s with 2 processes, 13.6 s in one
process, 14.4 s with 2 threads (opening a JPEG is mostly Python header parsing, which holds the
GIL, so threads do not help; when another job keeps a core busy the processes gain nothing).

The arrays are cached as an uncompressed .npz in `cache_dir` (default: the project cache's
image_folder/, $CNN_JAX_CACHE_DIR/image_folder or ~/.cache/cnn_jax/image_folder), named by a
content hash: SHA-256 over every image's relative path and the SHA-256 of its bytes, so a file
added, removed, renamed or rewritten changes the name and the folder is decoded again, while an
identical copy of a folder (other mtimes, another place) reuses the cache. Hashing CIFAR-10's
60,000 files (57 MB) costs 1.8-2.1 s even from the page cache, so, as git's index does, a small
index file maps the folder's stat fingerprint (relative path, size and mtime_ns of every image,
from the listing that is made anyway) to its content hash: an unchanged folder loads in about a
second without reading the files, and a folder whose stat fingerprint is new is hashed once.
(Like git, this trusts that a file rewritten with the same size within the same mtime_ns is
unchanged.) A cache file that fails to load or disagrees with the listing is rebuilt. Old cache
files are not deleted.

`resize=S` makes folders of mixed image sizes loadable the way Krizhevsky et al. prepared
ImageNet: each image's shorter side is scaled to S (PIL bilinear, antialiased) and the central
S x S square is kept; S is part of the cache file's name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import pickle
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

from cnn_jax import runtime
from cnn_jax.datasets.splits import DataError

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')  # compared lower-case
LAYOUT = 'split/class/image.{png,jpg,jpeg}'
_LAYOUT_FIX = f'Point --config.data.data_dir at a folder laid out as {LAYOUT}.'
_CACHE_VERSION = 1  # bump when the cache layout or the decoding changes
_POOL_MIN_IMAGES = 4096  # below this, starting worker processes costs more than it saves
_DATA_ERROR_EXIT = 3  # a decoding worker's exit status for a DataError (its message on stderr)


@dataclasses.dataclass(frozen=True)
class Listing:
  """Every image of the folder in load order, and its stat fingerprint (see the module doc)."""
  root: pathlib.Path
  splits: tuple[str, ...]
  class_names: tuple[str, ...]
  files: dict[str, list[str]]  # split -> paths relative to root, 'split/class/name.jpg'
  labels: dict[str, np.ndarray]  # split -> int32 [N]
  fingerprint: str


def load(root, splits=('train', 'test'), cache_dir=None, *, resize: int = 0,
         missing_fix: str = _LAYOUT_FIX):
  """Returns (((images uint8 [N, H, W, C], labels int32 [N]) for each split), class_names).

  `resize` > 0: every image's shorter side is scaled to it and the central square kept.
  `missing_fix` ends the error raised when `root` or a split folder is missing.
  """
  if resize < 0:
    raise ValueError(f'resize must be >= 0, got {resize}.')
  listing = list_images(root, tuple(splits), missing_fix)
  folder = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  index = _index_file(listing, folder)
  content = _read_text(index)
  if content is None:  # a folder (or a state of it) not seen before: hash its bytes
    content = content_hash(listing)
  cache = cache_file(listing, content, folder, resize)
  arrays = _read_cache(cache, listing)
  if arrays is None:
    arrays = _decode_listing(listing, resize)
    _write_atomic(cache, lambda f: np.savez(f, **arrays))
  if _read_text(index) != content:
    _write_atomic(index, lambda f: f.write(content.encode()))
  per_split = tuple((arrays[f'images_{i}'], arrays[f'labels_{i}'])
                    for i in range(len(listing.splits)))
  return per_split, listing.class_names


def default_cache_dir() -> pathlib.Path:
  """image_folder/ in the project's cache: $CNN_JAX_CACHE_DIR, else $XDG_CACHE_HOME/cnn_jax."""
  return runtime.cache_dir() / 'image_folder'


def _cache_name(listing: Listing) -> str:
  return listing.root.resolve().name or 'root'


def cache_file(listing: Listing, content: str, cache_dir=None, resize: int = 0) -> pathlib.Path:
  """The arrays' cache file, named by the folder's content hash (and the resize, if any)."""
  folder = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  size = f'-s{resize}' if resize else ''
  return folder / f'{_cache_name(listing)}-{content[:24]}{size}.npz'


def _index_file(listing: Listing, folder: pathlib.Path) -> pathlib.Path:
  """Stat fingerprint -> content hash: lets an unchanged folder skip reading its files."""
  return folder / f'{_cache_name(listing)}-stat-{listing.fingerprint[:24]}.txt'


def content_hash(listing: Listing) -> str:
  """SHA-256 over every image's relative path (in load order) and the SHA-256 of its bytes."""
  digest = hashlib.sha256(f'image_folder v{_CACHE_VERSION} {listing.splits}'.encode())
  for split in listing.splits:
    for rel in listing.files[split]:
      try:
        data = (listing.root / rel).read_bytes()
      except OSError as e:
        raise DataError(f'Cannot read {listing.root / rel}: {e}. Fix the file\'s permissions or '
                        'remove it from the folder.') from e
      digest.update(rel.encode('utf-8', 'surrogateescape') + b'\0')
      digest.update(hashlib.sha256(data).digest())
  return digest.hexdigest()


# Listing and fingerprint.

def list_images(root, splits: tuple[str, ...], missing_fix: str = _LAYOUT_FIX) -> Listing:
  """Scans the folder (no decoding) and checks its layout."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f'Image folder {root} does not exist. {missing_fix}')
  scans = {}
  for split in splits:
    if not (root / split).is_dir():
      raise DataError(f'Image folder {root} has no {split!r} split: {root / split} is missing. '
                      f'{missing_fix}')
    scans[split] = _scan_split(root / split)
  class_names = _common_classes(root, scans)
  files, labels, lines = {}, {}, [f'image_folder v{_CACHE_VERSION} {splits}']
  for split, classes in scans.items():
    entries = [(f'{split}/{name}/{fname}', size, mtime_ns)
               for name in class_names for fname, size, mtime_ns in classes[name]]
    files[split] = [rel for rel, _, _ in entries]
    labels[split] = np.repeat(np.arange(len(class_names), dtype=np.int32),
                              [len(classes[name]) for name in class_names])
    lines += [f'{rel}\0{size}\0{mtime_ns}' for rel, size, mtime_ns in entries]
  fingerprint = hashlib.sha256('\n'.join(lines).encode('utf-8', 'surrogateescape')).hexdigest()
  return Listing(root, splits, class_names, files, labels, fingerprint)


def _scan_split(split_dir: pathlib.Path) -> dict[str, list[tuple[str, int, int]]]:
  """Class name -> sorted (file name, size, mtime_ns) of its images."""
  with os.scandir(split_dir) as entries:
    class_dirs = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith('.'))
  if not class_dirs:
    raise DataError(f'{split_dir} holds no class folders. Put its images in one sub-folder per '
                    f'class: {LAYOUT}.')
  return {name: _scan_class(split_dir / name) for name in class_dirs}


def _scan_class(class_dir: pathlib.Path) -> list[tuple[str, int, int]]:
  with os.scandir(class_dir) as entries:
    images = [(e.name, e.stat()) for e in entries if _is_image(e)]
  if not images:
    raise DataError(f'Class folder {class_dir} holds no images ({", ".join(IMAGE_SUFFIXES)}). '
                    'Add images to it or remove the folder.')
  return [(name, st.st_size, st.st_mtime_ns) for name, st in sorted(images)]


def _is_image(entry: os.DirEntry) -> bool:
  name = entry.name
  return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith('.') and entry.is_file()


def _common_classes(root: pathlib.Path, scans: dict) -> tuple[str, ...]:
  """The class names, which every split must share."""
  splits = list(scans)
  for split in splits:
    for other in splits:
      missing = sorted(set(scans[split]) - set(scans[other]))
      if missing:
        raise DataError(
            f'Class {missing[0]!r} is in {root / split / missing[0]} but not in {root / other}: '
            f'every split needs the same class folders. Add {root / other / missing[0]} (with '
            f'images) or remove {root / split / missing[0]}.')
  return tuple(scans[splits[0]])


# Decoding.

def _decode_listing(listing: Listing, resize: int = 0) -> dict[str, np.ndarray]:
  paths = [str(listing.root / rel) for split in listing.splits for rel in listing.files[split]]
  _note(f'Decoding {len(paths):,} images in {listing.root} (once; cached afterwards) ...')
  images = _stack_same_size(_decode_many(paths, resize=resize), paths, listing.root)
  arrays = {'class_names': np.asarray(listing.class_names, dtype=str)}
  start = 0
  for i, split in enumerate(listing.splits):
    end = start + len(listing.files[split])
    arrays[f'images_{i}'], arrays[f'labels_{i}'] = images[start:end], listing.labels[split]
    start = end
  return arrays


def _decode_many(paths: list[str], workers: int | None = None, resize: int = 0
                 ) -> list[np.ndarray]:
  """Decodes in `workers` processes (default: one per core), or here for a few images."""
  workers = workers or num_cpus()
  if workers < 2 or len(paths) < _POOL_MIN_IMAGES:
    return _decode_chunk(paths, resize)
  size = -(-len(paths) // workers)
  shares = [paths[i:i + size] for i in range(0, len(paths), size)]
  try:
    return [image for share in _run_workers(shares, resize) for image in share]
  except _WorkerFailed as e:
    _note(f'A decoding worker failed ({e}); decoding in this process instead.')
    return _decode_chunk(paths, resize)


class _WorkerFailed(Exception):
  pass


def _run_workers(shares: list[list[str]], resize: int = 0) -> list[list[np.ndarray]]:
  """Decodes each share in a fresh `python -c` process, results pickled back through stdout.

  Not multiprocessing: 'spawn' and 'forkserver' re-run the caller's main script in every worker,
  and 'fork' is unsafe once JAX runs threads.
  """
  package_parent = str(pathlib.Path(__file__).resolve().parents[2])
  env = runtime.child_environment(package_parent)
  code = 'from cnn_jax.datasets import image_folder; image_folder.decode_worker_main()'
  with tempfile.TemporaryDirectory(prefix='image_folder_') as tmp:
    procs = []
    try:
      for i, share in enumerate(shares):
        list_file = pathlib.Path(tmp) / f'share{i}.txt'
        list_file.write_bytes(b'\0'.join(map(os.fsencode, share)))
        procs.append(subprocess.Popen([sys.executable, '-c', code, str(list_file), str(resize)],
                                      env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
      outputs = [proc.communicate() for proc in procs]
    finally:  # interrupted: stop the workers too
      for proc in procs:
        if proc.poll() is None:
          proc.kill()
          proc.wait()
  for proc, (out, err) in zip(procs, outputs):
    message = err.decode(errors='replace').strip()
    if proc.returncode == _DATA_ERROR_EXIT:
      raise DataError(message.splitlines()[-1])  # the worker prints the DataError last
    if proc.returncode != 0:
      raise _WorkerFailed(f'exit code {proc.returncode}: {message[-500:]}')
  return [pickle.loads(out) for out, _ in outputs]


def decode_worker_main() -> None:
  """A decoding worker: paths ('\\0'-separated) in the file argv[1], the resize in argv[2],
  pickled arrays to stdout."""
  paths = [os.fsdecode(p) for p in pathlib.Path(sys.argv[1]).read_bytes().split(b'\0')]
  try:
    images = _decode_chunk(paths, int(sys.argv[2]))
  except DataError as e:
    print(e, file=sys.stderr)
    sys.exit(_DATA_ERROR_EXIT)
  pickle.dump(images, sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)


def _decode_chunk(paths: list[str], resize: int = 0) -> list[np.ndarray]:
  return [decode(p, resize) for p in paths]


def decode(path, resize: int = 0) -> np.ndarray:
  """One image as uint8 [H, W] (grayscale) or [H, W, 3]; an unreadable or truncated file raises.
  `resize` > 0: the shorter side scaled to it, then the central resize x resize square."""
  try:
    with Image.open(path) as img:
      img.load()  # decodes now, so a truncated file fails here and not later
      if img.mode not in ('L', 'RGB'):
        img = img.convert('L' if img.mode in ('1', 'LA') else 'RGB')
      if resize:
        img = resize_center_crop(img, resize)
      return np.asarray(img, np.uint8)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise DataError(f'Cannot decode image {path}: {e}. Replace or delete the file.') from e


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
  """Scales the shorter side to `size` (bilinear, antialiased), keeps the central square."""
  w, h = img.size
  scale = size / min(w, h)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  if (new_w, new_h) != (w, h):
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
  left, top = (new_w - size) // 2, (new_h - size) // 2
  return img.crop((left, top, left + size, top + size))


def _stack_same_size(images: list[np.ndarray], paths: list[str], root) -> np.ndarray:
  """One uint8 [N, H, W, C] array: C = 1 if every image is grayscale, else 3."""
  example = {}  # (H, W) -> the first path of that size
  for image, path in zip(images, paths):
    example.setdefault(image.shape[:2], path)
  if len(example) > 1:
    sizes = ', '.join(f'{h}x{w} (e.g. {p})' for (h, w), p in example.items())
    raise DataError(f'Images in {root} differ in size (height x width): {sizes}. Resize them to '
                    'one size (every split must share it), or set --config.data.resize=S to '
                    'scale each shorter side to S and keep the central S x S square.')
  channels = 3 if any(image.ndim == 3 for image in images) else 1
  (height, width), = example
  out = np.empty((len(images), height, width, channels), np.uint8)
  for i, image in enumerate(images):
    out[i] = image if image.ndim == 3 else image[..., None]  # a grayscale image fills every channel
  return out


def num_cpus() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


# Cache.

def _read_cache(path: pathlib.Path, listing: Listing) -> dict[str, np.ndarray] | None:
  """The cached arrays, or None when there are none or they do not match the listing."""
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {key: npz[key] for key in npz.files}
    problem = _cache_problem(arrays, listing)
  except Exception as e:  # pylint: disable=broad-except  # any unreadable cache is rebuilt
    problem = f'unreadable ({type(e).__name__}: {e})'
  if problem:
    _note(f'Cache {path} is {problem}; decoding the images again.')
    return None
  return arrays


def _cache_problem(arrays: dict[str, np.ndarray], listing: Listing) -> str | None:
  if tuple(arrays['class_names'].tolist()) != listing.class_names:
    return 'for other classes'
  shapes = set()
  for i, split in enumerate(listing.splits):
    images, labels = arrays[f'images_{i}'], arrays[f'labels_{i}']
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(listing.files[split]):
      return f'wrong for split {split!r}: images {images.dtype} {images.shape}'
    if labels.dtype != np.int32 or not np.array_equal(labels, listing.labels[split]):
      return f'wrong for split {split!r}: labels differ'
    shapes.add(images.shape[1:])
  return 'inconsistent: splits differ in image shape' if len(shapes) > 1 else None


def _read_text(path: pathlib.Path) -> str | None:
  try:
    return path.read_text().strip() or None
  except (OSError, UnicodeDecodeError):
    return None


def _write_atomic(path: pathlib.Path, write) -> None:
  """Writes atomically (a temporary file, then os.replace); a failure only costs the cache."""
  tmp = None
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix='.tmp')
    with os.fdopen(fd, 'wb') as f:
      write(f)
    os.replace(tmp, path)
    tmp = None
  except OSError as e:
    _note(f'Cannot write the cache {path} ({e}); the next load decodes again.')
  finally:
    if tmp and os.path.exists(tmp):
      os.unlink(tmp)


def _note(msg: str) -> None:
  print(f'image_folder: {msg}', file=sys.stderr, flush=True)
