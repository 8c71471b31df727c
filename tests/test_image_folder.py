"""Image folders (split/class/*.jpg): arrays and labels, decode cache, clear errors, config path."""
import os
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from cnn_jax import config_base, datasets
from cnn_jax.datasets import image_folder

CIFAR10_JPEG = datasets._SHARED_DATA / 'cifar10-jpeg'  # pylint: disable=protected-access


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv('CNN_JAX_CACHE_DIR', str(tmp_path / 'cache'))
  return tmp_path / 'cache' / 'image_folder'


def _save(path, value, size=(6, 4), mode='RGB'):
  """A solid image of `value` (every channel), `size` = (width, height)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new(mode, size, value if mode == 'L' else (value,) * 3).save(path)
  return path


def _folder(root, counts=None, **kwargs):
  """train/ and test/ with counts[class] images; pixel value = 10 * label + index in class."""
  counts = counts or {'dog': 2, 'cat': 3}
  labels = {name: i for i, name in enumerate(sorted(counts))}
  for split in ('train', 'test'):
    for name, n in counts.items():
      for i in range(n):
        _save(root / split / name / f'{i}.png', 10 * labels[name] + i, **kwargs)
  return root


def _match(path):
  return re.escape(str(path))


def test_arrays_labels_and_order(tmp_path):
  root = _folder(tmp_path / 'data')
  _save(root / 'train' / 'cat' / '10.PNG', 99)  # sorts between 1.png and 2.png; upper-case suffix
  _save(root / 'train' / 'dog' / 'x.JPEG', 200)
  (root / 'train' / 'dog' / 'notes.txt').write_text('not an image')
  (root / 'train' / '.ipynb_checkpoints').mkdir()
  ((train_x, train_y), (test_x, test_y)), names = image_folder.load(root)
  assert names == ('cat', 'dog')
  assert train_x.shape == (7, 4, 6, 3) and train_x.dtype == np.uint8
  assert test_x.shape == (5, 4, 6, 3)
  assert train_y.dtype == np.int32 and train_y.tolist() == [0, 0, 0, 0, 1, 1, 1]
  assert train_x[:6, 0, 0, 0].tolist() == [0, 1, 99, 2, 10, 11]  # files sorted within a class
  assert abs(int(train_x[6, 0, 0, 0]) - 200) <= 2  # the JPEG, lossy
  assert test_y.tolist() == [0, 0, 0, 1, 1] and test_x[:, 0, 0, 0].tolist() == [0, 1, 2, 10, 11]


def test_second_load_reads_the_cache(tmp_path, cache_dir, monkeypatch):
  root = _folder(tmp_path / 'data')
  first = image_folder.load(root)
  assert len(list(cache_dir.glob('data-*.npz'))) == 1 and not list(cache_dir.glob('*.tmp'))

  def no_decoding(path):
    raise AssertionError(f'decoded {path} despite the cache')
  monkeypatch.setattr(image_folder, 'decode', no_decoding)
  second = image_folder.load(root)
  assert second[1] == first[1]
  for (a_x, a_y), (b_x, b_y) in zip(first[0], second[0]):
    np.testing.assert_array_equal(a_x, b_x)
    np.testing.assert_array_equal(a_y, b_y)


def _forbid_decoding(monkeypatch):
  def no_decoding(path):
    raise AssertionError(f'decoded {path} despite the cache')
  monkeypatch.setattr(image_folder, 'decode', no_decoding)


def test_cache_is_keyed_by_content_not_mtime(tmp_path, cache_dir, monkeypatch):
  """A touched folder and an identical copy elsewhere are hashed, not decoded; an unchanged
  folder is not even hashed (its stat fingerprint is in the index)."""
  import shutil  # pylint: disable=g-import-not-at-top
  root = _folder(tmp_path / 'data')
  first = image_folder.load(root)
  assert len(list(cache_dir.glob('data-stat-*.txt'))) == 1
  _forbid_decoding(monkeypatch)
  for path in (root / 'train' / 'cat').iterdir():  # same bytes, new mtimes
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000))
  copy = shutil.copytree(root, tmp_path / 'elsewhere' / 'data')  # another place, same content
  for folder in (root, copy):
    again = image_folder.load(folder)
    np.testing.assert_array_equal(again[0][0][0], first[0][0][0])
  assert len(list(cache_dir.glob('data-*.npz'))) == 1  # one content, one cache file

  def no_hashing(listing):
    raise AssertionError('hashed an unchanged folder')
  monkeypatch.setattr(image_folder, 'content_hash', no_hashing)
  image_folder.load(root)


def _add(root):
  _save(root / 'train' / 'dog' / '9.png', 77)


def _remove(root):
  (root / 'train' / 'dog' / '1.png').unlink()


def _rename(root):
  (root / 'train' / 'cat' / '0.png').rename(root / 'train' / 'cat' / '5.png')


def _modify(root):
  path = _save(root / 'train' / 'dog' / '1.png', 77)
  stat = path.stat()  # same size; make sure the mtime moves even on a coarse clock
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


@pytest.mark.parametrize('change', [_add, _remove, _rename, _modify])
def test_changed_folder_is_decoded_again(tmp_path, change):
  root = _folder(tmp_path / 'data')
  image_folder.load(root)
  change(root)
  ((train_x, _), _), _ = image_folder.load(root)
  expected = {_add: 6, _remove: 4, _rename: 5, _modify: 5}[change]
  assert len(train_x) == expected
  if change is _add:
    assert train_x[-1, 0, 0, 0] == 77
  if change is _modify:
    assert train_x[-1, 0, 0, 0] == 77
  if change is _rename:  # 5.png now sorts after 1.png and 2.png
    assert train_x[:3, 0, 0, 0].tolist() == [1, 2, 0]


@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'wrong_shapes'])
def test_corrupt_cache_is_rebuilt(tmp_path, cache_dir, damage, capsys):
  root = _folder(tmp_path / 'data')
  expected = image_folder.load(root)
  cache, = cache_dir.glob('*.npz')
  if damage == 'garbage':
    cache.write_bytes(b'not a zip file')
  elif damage == 'truncated':
    cache.write_bytes(cache.read_bytes()[:300])
  else:
    np.savez(cache, class_names=np.asarray(['cat', 'dog']),
             images_0=np.zeros((2, 4, 6, 3), np.uint8), labels_0=np.zeros(2, np.int32),
             images_1=np.zeros((5, 4, 6, 3), np.uint8), labels_1=np.zeros(5, np.int32))
  again = image_folder.load(root)
  assert 'decoding the images again' in capsys.readouterr().err
  np.testing.assert_array_equal(again[0][0][0], expected[0][0][0])
  image_folder.load(root)  # the rebuilt cache is good
  assert 'decoding the images again' not in capsys.readouterr().err


def test_grayscale_folder_has_one_channel_and_mixed_folder_three(tmp_path):
  root = _folder(tmp_path / 'gray', mode='L')
  ((train_x, _), _), _ = image_folder.load(root)
  assert train_x.shape == (5, 4, 6, 1) and train_x[4, 0, 0, 0] == 11
  _save(root / 'train' / 'cat' / '7.png', 50)  # one RGB image: everything becomes RGB
  ((train_x, _), (test_x, _)), _ = image_folder.load(root)
  assert train_x.shape == (6, 4, 6, 3) and test_x.shape == (5, 4, 6, 3)
  assert train_x[0, 0, 0].tolist() == [0, 0, 0] and train_x[5, 0, 0].tolist() == [11, 11, 11]


def test_decoding_in_worker_processes(tmp_path, monkeypatch):
  root = _folder(tmp_path / 'data', counts={'a': 3, 'b': 3})
  paths = sorted(str(p) for p in root.rglob('*.png'))
  monkeypatch.setattr(image_folder, '_POOL_MIN_IMAGES', 0)
  images = image_folder._decode_many(paths, workers=2)  # pylint: disable=protected-access
  assert [int(x[0, 0, 0]) for x in images] == [int(image_folder.decode(p)[0, 0, 0]) for p in paths]
  bad = root / 'train' / 'b' / '2.png'
  bad.write_bytes(bad.read_bytes()[:40])
  with pytest.raises(datasets.DataError, match='Cannot decode image ' + _match(bad)):
    image_folder._decode_many(paths, workers=2)  # pylint: disable=protected-access


def test_failing_workers_fall_back_to_decoding_here(tmp_path, monkeypatch, capsys):
  root = _folder(tmp_path / 'data')
  paths = sorted(str(p) for p in root.rglob('*.png'))
  monkeypatch.setattr(image_folder, '_POOL_MIN_IMAGES', 0)
  monkeypatch.setattr(image_folder.sys, 'executable', '/bin/false')  # workers that cannot start
  images = image_folder._decode_many(paths, workers=2)  # pylint: disable=protected-access
  assert len(images) == len(paths) and 'decoding in this process instead' in capsys.readouterr().err


# Errors: each names the path and the fix.

def test_missing_root_and_split(tmp_path):
  with pytest.raises(datasets.DataError, match=_match(tmp_path / 'nope') + '.*data_dir'):
    image_folder.load(tmp_path / 'nope')
  root = _folder(tmp_path / 'data')
  with pytest.raises(datasets.DataError, match="no 'val' split: " + _match(root / 'val')):
    image_folder.load(root, splits=('train', 'val'))


@pytest.mark.parametrize('damage', ['truncated', 'not_an_image'])
def test_unreadable_image_names_the_file(tmp_path, damage):
  root = _folder(tmp_path / 'data')
  bad = root / 'test' / 'dog' / '5.jpg'
  noise = np.random.default_rng(0).integers(0, 256, (4, 6, 3), np.uint8)
  Image.fromarray(noise).resize((60, 40)).save(bad)  # mostly scan data, so the cut falls in it
  raw = bad.read_bytes()
  bad.write_bytes(raw[:len(raw) * 3 // 4] if damage == 'truncated' else b'hello')
  with pytest.raises(datasets.DataError, match='Cannot decode image ' + _match(bad)):
    image_folder.load(root)


def test_empty_class_folder(tmp_path):
  root = _folder(tmp_path / 'data')
  (root / 'test' / 'dog' / '0.png').rename(root / 'test' / 'dog' / '0.txt')
  (root / 'test' / 'dog' / '1.png').unlink()
  with pytest.raises(datasets.DataError, match=_match(root / 'test' / 'dog') + ' holds no images'):
    image_folder.load(root)


@pytest.mark.parametrize('split, other', [('train', 'test'), ('test', 'train')])
def test_class_missing_from_a_split(tmp_path, split, other):
  root = _folder(tmp_path / 'data')
  _save(root / split / 'emu' / '0.png', 1)
  with pytest.raises(datasets.DataError, match=f"'emu' is in {_match(root / split / 'emu')} but "
                                               f'not in {_match(root / other)}'):
    image_folder.load(root)


def test_mixed_sizes_name_an_example_of_each(tmp_path):
  root = _folder(tmp_path / 'data')
  odd = _save(root / 'test' / 'cat' / '7.png', 1, size=(5, 5))
  with pytest.raises(datasets.DataError, match='differ in size') as e:
    image_folder.load(root)
  assert f'4x6 (e.g. {root / "train" / "cat" / "0.png"})' in str(e.value)
  assert f'5x5 (e.g. {odd})' in str(e.value)


# Through the config: datasets.load(config.data).

def _data_config(**values):
  c = config_base.base_config().data
  c.update(values)
  return c


def test_config_image_folder(tmp_path):
  root = _folder(tmp_path / 'mine', counts={'a': 4, 'b': 4, 'c': 4})
  s = datasets.load(_data_config(dataset='image_folder', source='folder', data_dir=str(root),
                                 validation_size=3))
  assert s.num_classes == 3 and s.source == 'image folder mine'
  assert s.train[0].shape == (9, 4, 6, 3) and s.val[0].shape == (3, 4, 6, 3)
  assert s.test[0].shape == (12, 4, 6, 3) and s.train[1].dtype == np.int32
  assert s.image_shape == (4, 6, 3)


def test_config_errors(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match='no default image folder; set --config.data.data_dir=DIR'):
    datasets.load(_data_config(dataset='image_folder', source='folder'))
  with pytest.raises(ValueError, match='source=folder'):
    datasets.load(_data_config(dataset='image_folder', source='tfds'))
  with pytest.raises(ValueError, match="Unknown data.source 'floder'"):
    datasets.load(_data_config(source='floder'))
  with pytest.raises(ValueError, match="Did you mean 'image_folder'"):
    datasets.load(_data_config(dataset='image_foldr', source='folder'))
  with pytest.raises(ValueError, match='not bundled.*source=tfds.*source=folder'):
    datasets.load(_data_config(dataset='cifar10'))
  root = _folder(tmp_path / 'data')
  with pytest.raises(datasets.DataError, match=_match(root) + ' has 2 class folders.*has 10'):
    datasets.load(_data_config(dataset='cifar10', source='folder', data_dir=str(root)))
  wrong = _folder(tmp_path / 'digits', counts={str(i): 1 for i in range(10)})
  with pytest.raises(datasets.DataError, match='not the cifar10 classes in their standard order'):
    datasets.load(_data_config(dataset='cifar10', source='folder', data_dir=str(wrong),
                               validation_size=1))
  # The default CIFAR-10 folder missing: the fix names data_dir and tfds.
  bundled, tfds_name, folder, n = datasets._DATASETS['cifar10']  # pylint: disable=protected-access
  monkeypatch.setitem(datasets._DATASETS, 'cifar10',  # pylint: disable=protected-access
                      (bundled, tfds_name, folder._replace(path=tmp_path / 'absent'), n))
  with pytest.raises(datasets.DataError, match=_match(tmp_path / 'absent') +
                     r'.*--config.data.data_dir=DIR.*--config.data.source=tfds'):
    datasets.load(_data_config(dataset='cifar10', source='folder'))


def test_cifar10_default_folder_is_beside_the_repository():
  assert CIFAR10_JPEG.parents[2] == pathlib.Path(__file__).resolve().parents[2]
  assert datasets.CIFAR10_CLASSES == tuple(sorted(datasets.CIFAR10_CLASSES))


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR10_JPEG.is_dir(), reason=f'no CIFAR-10 JPEG copy at {CIFAR10_JPEG}')
def test_real_cifar10_jpeg_copy():
  s = datasets.load(_data_config(dataset='cifar10', source='folder', validation_size=0))
  assert s.source == 'CIFAR-10 (JPEG copy)' and s.num_classes == 10
  assert s.train[0].shape == (50000, 32, 32, 3) and s.test[0].shape == (10000, 32, 32, 3)
  assert np.bincount(s.train[1]).tolist() == [5000] * 10
  assert np.bincount(s.test[1]).tolist() == [1000] * 10
