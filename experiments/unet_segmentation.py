"""Claim C23: U-Net segments, trained with a per-pixel cross-entropy (same and valid padding).

    python -m experiments.unet_segmentation                         # cpu preset, both nets
    python -m experiments.unet_segmentation --report_only           # report from the workdirs
    python -m experiments.unet_segmentation --preset=cpu --report_dir=reports/unet_segmentation

Trains each model of `--models` with `configs/unet_segmentation.py:<model>,<preset>` in
`<workdir>/<model>` (resuming; finished runs are skipped), then writes `report.md`,
`predictions.png` (input, true mask and each net's prediction, side by side, on test canvases)
and `results.json` in `<workdir>`. The report restores each best checkpoint, recomputes the test
confusion matrix (per-class IoU; its mIoU must match the loop's to 1e-4), and sets the nets beside
two baselines computed from the data: everything background, and the mask's own rule (ink above
the threshold) with the most frequent training digit, i.e. perfect foreground and no recognition.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import app, flags

from configs import unet_segmentation
from cnn_jax import cli, report, runtime, tasks
from cnn_jax.datasets import mnist_segmentation
from cnn_jax.metric_writers import read_metrics
from experiments import lecture_common
from experiments import report_parts, run_records

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
# An older run also has the clock this script kept beside it (its load: run_records.runs_load).
RECORDS = ('results.json', 'metrics.jsonl', 'config.json', lecture_common.Clock.FILE)
PADDING = {'unet': 'valid (the paper), overlap-tile input', 'unet_same': 'same'}
NUM_EXAMPLES = 6  # test canvases in the figure


def define_flags() -> None:
  """The harness's flags; defined only when run as a script, so tests can import the module."""
  lecture_common.define_flags(
      'unet_segmentation', '32x32 canvases with one digit, a tiny net, seconds.', sweep_flags=False,
      presets=unet_segmentation.PRESETS, default_preset='cpu',
      preset_help='Protocol of configs/unet_segmentation.py.', models=('unet_same', 'unet'),
      models_help='Any of unet_same, unet.')


def check_model(model: str) -> None:
  if model not in unet_segmentation.MODELS:
    raise ValueError(f'Unknown model {model!r}; choose from {unet_segmentation.MODELS}.')


def model_config(model: str, preset: str, overrides=()):
  return lecture_common.configured(unet_segmentation.get_config(f'{model},{preset}'), overrides)


# ------------------------------------------------------------------------------ measurement


def predict(model, variables, preprocess, images, batch_size: int = 100) -> np.ndarray:
  """Per-pixel classes [N, h, w] of uint8 canvases (the net's own output size)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  forward = jax.jit(lambda v, x: jnp.argmax(
      model.apply(v, preprocess(x, None, train=False), train=False), -1).astype(jnp.uint8))
  out = [np.asarray(forward(variables, images[i:i + batch_size]))
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out)


def confusion(masks: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """The test confusion matrix, the prediction aligned with the mask as in training."""
  size = min(predictions.shape[1], masks.shape[1]), min(predictions.shape[2], masks.shape[2])
  pred, true = tasks.center_crop(predictions, *size), tasks.center_crop(masks, *size)
  index = true.astype(np.int64) * num_classes + pred
  return np.bincount(index.ravel(), minlength=num_classes ** 2).reshape(num_classes, num_classes)


def scores(conf: np.ndarray) -> dict:
  conf = np.asarray(conf, np.float64)
  tp = np.diag(conf)
  union = conf.sum(0) + conf.sum(1) - tp
  iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
  return {'pixel_accuracy': float(tp.sum() / conf.sum()), 'mean_iou': float(np.nanmean(iou)),
          'iou': iou.tolist()}


def baselines(train_images, train_masks, test_images, test_masks, threshold=127) -> dict:
  """All-background, and ink-above-threshold as the most frequent training digit."""
  k = mnist_segmentation.NUM_CLASSES
  counts = np.bincount(train_masks.ravel(), minlength=k)
  majority = 1 + int(np.argmax(counts[1:]))
  background = np.zeros_like(test_masks)
  ink = np.where(test_images[..., 0] > threshold, majority, 0).astype(test_masks.dtype)
  return {'all background': scores(confusion(test_masks, background, k)),
          f'ink threshold, digit {majority - 1} everywhere': scores(confusion(test_masks, ink, k))}


def measure(workdir: pathlib.Path, models: list[str], preset: str, overrides=()) -> dict:
  """Restores each finished run's best checkpoint; test predictions, confusion and baselines."""
  out = {'models': {}}
  for model in models:
    run_dir = workdir / model
    if not (run_dir / 'results.json').exists():
      continue
    config = model_config(model, preset, overrides)
    net, variables, preprocess, splits = lecture_common.restore_best(config, run_dir)
    images, masks = splits.test
    pred = predict(net, variables, preprocess, images, config.eval_batch_size)
    out['models'][model] = {'confusion': confusion(masks, pred, splits.num_classes),
                            'examples': pred[:NUM_EXAMPLES], 'output_side': pred.shape[1]}
    if 'data' not in out:
      out['data'] = {'test_images': images[:NUM_EXAMPLES], 'test_masks': masks[:NUM_EXAMPLES],
                     'baselines': baselines(splits.train[0], splits.train[1], images, masks),
                     'num_train': len(splits.train[0]), 'num_val': len(splits.val[0]),
                     'num_test': len(images), 'canvas': images.shape[1]}
  return out


# ----------------------------------------------------------------------------------- figure


def plot_predictions(measured: dict, out: pathlib.Path) -> pathlib.Path:
  """Rows: test canvases; columns: input, true mask, then each net's prediction."""
  plt = lecture_common.pyplot()
  from matplotlib import colors  # pylint: disable=g-import-not-at-top
  data, nets = measured['data'], measured['models']
  k = mnist_segmentation.NUM_CLASSES
  cmap = colors.ListedColormap(['black'] + [plt.get_cmap('tab10')(i) for i in range(10)])
  norm = colors.BoundaryNorm(np.arange(k + 1) - 0.5, k)
  columns = ['input', 'true mask'] + [f'{m} prediction' for m in nets]
  rows = len(data['test_images'])
  fig, axes = plt.subplots(rows, len(columns), figsize=(2.1 * len(columns), 2.1 * rows),
                           squeeze=False)
  canvas = data['canvas']
  for r in range(rows):
    panels = [data['test_images'][r, ..., 0], data['test_masks'][r]]
    for m in nets.values():
      pred = m['examples'][r]
      pad = (canvas - pred.shape[0]) // 2  # a valid net's smaller output: centred, border grey
      if pad > 0:
        pred = np.pad(pred.astype(float), pad, constant_values=np.nan)
      elif pad < 0:
        pred = tasks.center_crop(pred[None], canvas, canvas)[0]
      panels.append(pred)
    for c, panel in enumerate(panels):
      ax = axes[r][c]
      if c == 0:
        ax.imshow(panel, cmap='gray', vmin=0, vmax=255)
      else:
        ax.imshow(np.ma.masked_invalid(panel), cmap=cmap, norm=norm, interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(columns[c], fontsize=9)
  handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(k)]
  fig.legend(handles, ['background'] + [f'digit {d}' for d in range(10)], loc='lower center',
             ncol=6, fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0.05, 1, 1))
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


# ----------------------------------------------------------------------------------- report


def _runs(workdir, models):
  runs = {}
  for model in models:
    path = workdir / model / 'results.json'
    if path.exists():
      runs[model] = json.loads(path.read_text())
  return runs


def _curve_rows(run_dir: pathlib.Path) -> list[list[str]]:
  """Per validation: step, val loss, pixel accuracy and mIoU; and the test mIoU at that step
  where the run recorded a test curve."""
  test = dict(_miou_curve(run_dir, 'test_curve'))
  rows = []
  for r in read_metrics(run_dir / 'metrics.jsonl'):
    if r['split'] == 'val':
      rows.append([f"{r['step']:,}", f"{r['loss']:.4f}", f"{r['accuracy']:.2%}",
                   f"{r['mean_iou']:.3f}"]
                  + ([f"{test[r['step']]:.3f}" if r['step'] in test else '–'] if test else []))
  return rows


PLATEAU_TOLERANCE = 0.005  # mIoU: a gain no larger than this in the last quarter is no gain


def curve_table(run_dir: pathlib.Path) -> str:
  rows = _curve_rows(run_dir)
  head = ['step', 'val loss', 'val pixel accuracy', 'val mIoU', 'test mIoU (read only)']
  return report.markdown_table(head[:len(rows[0])] if rows else head[:4], rows)


def plateau(curve: list[tuple[int, float]], tolerance: float = PLATEAU_TOLERANCE) -> dict:
  """Where a run stopped improving, from its validation mIoU per evaluation [(step, mIoU)]:
  plateaued when the best of the last quarter of the evaluations is at most `tolerance` above the
  best before it."""
  if len(curve) < 4:
    return {'plateaued': None, 'evaluations': len(curve)}
  cut = len(curve) - max(1, len(curve) // 4)
  before, last = curve[:cut], curve[cut:]
  best_before = max(before, key=lambda r: r[1])
  best_last = max(last, key=lambda r: r[1])
  best = max(curve, key=lambda r: r[1])
  return {'plateaued': best_last[1] - best_before[1] <= tolerance, 'evaluations': len(curve),
          'gain_last_quarter': best_last[1] - best_before[1], 'last_quarter_from': last[0][0],
          'best_step': best[0], 'best': best[1],
          'first_within_tolerance': next(s for s, v in curve if v >= best[1] - tolerance)}


def plateau_text(model: str, p: dict, curve: str = 'validation') -> str:
  if p['plateaued'] is None:
    return f'{model}, {curve} mIoU: {p["evaluations"]} evaluations, too few to tell.'
  verdict = ('plateaued' if p['plateaued'] else
             'still improving: a longer run (or a larger learning rate late) would gain more')
  return (f"{model}, {curve} mIoU: {verdict}. Best {p['best']:.3f} at step {p['best_step']:,}"
          f" (within {PLATEAU_TOLERANCE} of it from step {p['first_within_tolerance']:,}); gain in "
          f"the last quarter (from step {p['last_quarter_from']:,}): {p['gain_last_quarter']:+.3f}.")


CURVES = {'validation': 'val', 'test': 'test_curve'}  # a report's name -> the metrics split


def _miou_curve(run_dir: pathlib.Path, split: str) -> list[tuple[int, float]]:
  return [(r['step'], r['mean_iou']) for r in read_metrics(run_dir / 'metrics.jsonl')
          if r['split'] == split]


def claim_checks(test_miou: dict[str, float], recomputed_miou: dict[str, float],
                 best_baseline: float) -> report_parts.Checks:
  """C23 per net. Counted: its test mIoU (the loop's) above the best baseline's, i.e. the net
  recognises which digit each pixel belongs to. Fact (a self-consistency check): the mIoU the
  report recomputes from the best checkpoint agrees with the loop's to 1e-4."""
  checks = report_parts.Checks()
  for model, miou in test_miou.items():
    checks.add('C23', f'{model}: test mIoU above the best baseline (per-pixel digit recognition)',
               'stated', f'> {best_baseline:.3f}', f'{miou:.3f}', miou > best_baseline)
    again = recomputed_miou[model]
    checks.add('C23', f'{model}: report recomputes the loop\'s test mIoU from the best checkpoint',
               '–', 'difference < 1e-4', f'{again:.5f} vs {miou:.5f}', abs(again - miou) < 1e-4,
               fact=True)
  return checks


def headline(test: dict[str, dict]) -> str:
  """The README's line: each net's test mIoU and pixel accuracy."""
  return '; '.join(f"{m}: test mIoU {t['mean_iou']:.3f}, pixel accuracy {t['pixel_accuracy']:.1%}"
                   for m, t in test.items())


def recompute(report_dir: pathlib.Path) -> report_parts.Recomputed:
  """The report in `report_dir` (reports/unet_segmentation) computed again from its files: each
  net's test figures from its run's results.json, the per-class test IoU (recomputed from the best
  checkpoint when the report was written) and the baselines from the report's results.json."""
  record = run_records.read_json(report_dir / 'results.json')
  runs = {m: run_records.read_json(report_dir / m / 'results.json') for m in record['test']}
  test = {m: {'pixel_accuracy': r['test_accuracy'], 'mean_iou': r['test_mean_iou']}
          for m, r in runs.items()}
  again = {m: float(np.nanmean(np.asarray(iou, np.float64)))
           for m, iou in record['per_class_iou'].items()}
  checks = claim_checks({m: t['mean_iou'] for m, t in test.items()}, again,
                        max(b['mean_iou'] for b in record['baselines'].values()))
  return report_parts.Recomputed(checks, headline(test))


def _iou_cells(iou) -> list[str]:
  return [f'{v:.2f}' if v == v else '–' for v in iou]


def _tables(runs: dict, measured: dict, configs: dict) -> tuple[str, str]:
  """The results table (the nets, then the baselines) and the per-class test IoU table."""
  data, rows, per_class = measured['data'], [], []
  for model, res in runs.items():
    m, cfg = measured['models'][model], configs[model]
    shape = (f"{cfg.data.image_size or data['canvas']}² → {m['output_side']}²"
             + (f" (crop to {data['canvas']}²)" if m['output_side'] != data['canvas'] else ''))
    rows.append([model, PADDING[model], shape, f"{res['num_params']:,}",
                 f"{res['test_accuracy']:.2%}", f"{res['test_mean_iou']:.3f}",
                 f"{res['val_mean_iou']:.3f}" if 'val_mean_iou' in res else '–',
                 f"{res['best_step']:,} / {res['steps']:,}",
                 f"{res['wall_time_s'] / 60:.1f} min",
                 f"{res['train_images_per_s']:.0f}" if res['train_images_per_s'] else '–'])
    per_class.append([model] + _iou_cells(scores(m['confusion'])['iou']))
  for name, b in data['baselines'].items():
    rows.append([f'baseline: {name}', '–', '–', '–', f"{b['pixel_accuracy']:.2%}",
                 f"{b['mean_iou']:.3f}", '–', '–', '–', '–'])
    per_class.append([f'baseline: {name}'] + _iou_cells(b['iou']))
  table = report.markdown_table(
      ['model', 'padding', 'input → output', 'params', 'test pixel accuracy', 'test mIoU',
       'val mIoU', 'best / last step', 'wall time', 'train images/s'], rows)
  return table, report.markdown_table(
      ['model', 'background'] + [f'digit {d}' for d in range(10)], per_class)


def _header(workdir: pathlib.Path, runs: dict, data: dict, cfg, preset: str, command: str,
            status: str) -> str:
  """The report's title and its command, data, protocol, metrics and hardware."""
  any_run = next(iter(runs.values()))
  train_wall = sum(r['wall_time_s'] for r in runs.values())
  kw = dict(cfg.model_kwargs)
  return f"""# U-Net segmentation of MNIST canvases — claim C23

Generated by `experiments/unet_segmentation.py` from the runs' `results.json` and `metrics.jsonl`
and their best checkpoints ({status}).

- **Command**: `{command}` (each run: `configs/unet_segmentation.py:<model>,{preset}`); per-run
  commands below.
- **Data**: `mnist_segmentation` ({any_run['dataset']}): {data['canvas']}x{data['canvas']} canvases
  with 1–{cfg.data.segmentation.max_digits} MNIST digits each, non-overlapping, 11 classes (background and
  the ten digits; a pixel is a digit's when its ink exceeds 127). {data['num_train']:,} training
  and {data['num_val']:,} validation canvases made from MNIST train digits, {data['num_test']:,} test
  canvases from MNIST test digits; generation seed {cfg.data.segmentation.seed}. No augmentation.
- **Protocol**: U-Net at width `features={kw.get('features')}` (the paper: 64) and depth
  `{kw.get('depth')}` poolings (the paper: 4), no BatchNorm; {cfg.optimizer} lr
  {cfg.learning_rate:g} ({cfg.lr_schedule}), batch {cfg.batch_size}, {cfg.num_epochs} epochs;
  loss: per-pixel cross-entropy, every class counted. The test figures come from the checkpoint
  with the lowest validation loss. Valid padding (the paper): the canvas is padded with black,
  its own background, to the smallest input whose output covers it (the paper's overlap-tile
  input, mirrored there), and output and mask are centre-aligned by cropping
  (`cnn_jax.tasks.align`).
- **Metrics**: pixel accuracy = correct pixels / pixels; mIoU = mean over the 11 classes of
  TP / (TP + FP + FN), both from one confusion matrix summed over the test split on the device.
- **Hardware**: {run_records.machine_note(run_records.host_record(runs))};
  training wall time {train_wall / 60:.1f} min summed over the runs.
  {run_records.busy_note(run_records.runs_load(workdir / m for m in runs))}
"""


def write_report(workdir: pathlib.Path, models: list[str], preset: str,
                 overrides=(), command: str | None = None) -> pathlib.Path:
  """report.md and results.json in `workdir` from its runs (make_report)."""
  text, record = make_report(workdir, models, preset, overrides, command)
  (workdir / 'report.md').write_text(text)
  run_records.write_json(workdir / 'results.json', record)
  return workdir / 'report.md'


def make_report(workdir: pathlib.Path, models: list[str], preset: str,
                overrides=(), command: str | None = None) -> tuple[str, dict]:
  """(report.md's text, results.json's record) from the finished runs in `workdir`."""
  runs = _runs(workdir, models)
  if not runs:
    raise SystemExit(f'No finished runs under {workdir}; train first (drop --report_only).')
  measured = measure(workdir, list(runs), preset, overrides)
  png = plot_predictions(measured, workdir / 'predictions.png')
  base = measured['data']['baselines']
  configs = {m: model_config(m, preset, overrides) for m in runs}
  command = command or (f"python -m experiments.unet_segmentation --preset={preset} "
                        f"--models={','.join(models)}" + ''.join(f' --set={s}' for s in overrides))
  recomputed = {m: scores(measured['models'][m]['confusion']) for m in runs}
  checks = claim_checks({m: r['test_mean_iou'] for m, r in runs.items()},
                        {m: r['mean_iou'] for m, r in recomputed.items()},
                        max(b['mean_iou'] for b in base.values()))
  table, class_table = _tables(runs, measured, configs)
  curves = '\n\n'.join(f'**{m}**\n\n' + curve_table(workdir / m) for m in runs)
  status = ('all runs finished' if len(runs) == len(models) else
            f'{len(runs)} of {len(models)} runs finished')
  plateaus = {m: {name: plateau(curve) for name, split in CURVES.items()
                  if (curve := _miou_curve(workdir / m, split))} for m in runs}
  text = _header(workdir, runs, measured['data'], next(iter(configs.values())), preset, command,
                 status) + f"""
## Results

{table}

Background is most of every canvas, so pixel accuracy is high even for the all-background
baseline; mIoU weighs the eleven classes equally and is the figure to compare. The second
baseline segments the ink perfectly (it uses the rule that defines the masks) but does not
recognise digits; a net above it recognises which digit each pixel belongs to.

## Per-class test IoU (recomputed from the best checkpoints)

{class_table}

{report_parts.checks_section(checks)}
## Input, true mask and predictions (test canvases)

![predictions]({png.name})

## Along training

{curves}

Where the preset asks for it (`eval_test_curve`), the test mIoU is measured at each validation,
to show where the test figure stops improving; it chooses nothing (the checkpoint is the one with
the lowest validation loss). Where each run stopped improving (a gain of at most
{PLATEAU_TOLERANCE} mIoU in the last quarter of the evaluations counts as none):

{chr(10).join(f'- {plateau_text(m, p, name)}' for m, ps in plateaus.items()
              for name, p in ps.items())}

## Per-run commands

{chr(10).join(sorted({f"- `{r['command']}`" for r in runs.values()}))}

{report_parts.footer()}"""
  test = {m: {'pixel_accuracy': r['test_accuracy'], 'mean_iou': r['test_mean_iou']}
          for m, r in runs.items()}
  return text, {
      'experiment': 'unet_segmentation', 'claims': 'C23', 'preset': preset, 'status': status,
      'command': command, 'train_wall_time_s': sum(r['wall_time_s'] for r in runs.values()),
      'headline': headline(test), 'test': test,
      'per_class_iou': {m: r['iou'] for m, r in recomputed.items()},
      'baselines': base, 'plateau': plateaus, **report_parts.checks_record(checks)}


def main(argv):
  session = lecture_common.start(argv, 'unet_segmentation', check_model=check_model)
  preset, models = session.preset, session.models
  session.train(session.configs(  # every config before any training
      lambda: {m: model_config(m, preset, session.overrides) for m in models}))
  text, record = make_report(session.workdir, models, preset, session.overrides)
  path = session.finish(text, record, ('report.md', 'results.json', 'predictions.png')
                        + tuple(f'{m}/{n}' for m in models for n in RECORDS))
  print(f'report: {path}')


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
