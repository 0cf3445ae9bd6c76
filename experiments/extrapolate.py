"""Train short, test long: a trained LM evaluated at several lengths with position schemes applied at test time.

    python -m experiments.extrapolate --workdir=W [--eval_lengths=1,2,4,8] [--positions=rope,ntk,yarn,logn,...]
        [--modes=nonrepeated,repeated] [--max_windows=64] [--out=FILE.json]

--workdir is a finished run of the lm task (python -m experiments.train --config=lm:<mixer>-cpu ...). Its
parameters are restored read-only (best checkpoint) and the model is rebuilt at each test length L = m x the
training length T (--eval_lengths lists the multiples m) with each scheme's options, then scored on windows of the
test split:

    nonrepeated  real text: windows of L bytes
    repeated     the first T bytes of each window repeated up to L (can the model use a far, exact copy?)

Schemes (--positions) change only how positions are encoded at test time, never a parameter:

    trained        the model as trained (every mixer; a recurrent mixer's natural behaviour at any length)
    ntk            NTK-aware RoPE ("fixed"): base * s^(Kh / (Kh - 2)), s = L / T  (RoPE-trained attention)
    ntk_dynamic    dynamic NTK: each query (and the keys it scores) at s = max(1, (position + 1) / T), as
                   decoding token by token would (softmax, RoPE-trained). Scaling once per forward by the
                   window length instead would be exactly `ntk` at that length.
    ntk_mixed      NTK-RoPE-mixed: theta_i / s^(((i + 1) / (Kh/2))^0.75), s = L / T  (RoPE-trained attention)
    yarn           YaRN: per-frequency interpolation and q, k scaled by 1 + 0.1 ln s  (RoPE-trained attention)
    logn           log-n scaling of the scores, max(1, ln n / ln T), at test only  (RoPE / NoPE / ALiBi attention)
    ntk_logn       ntk and logn together
    ntk_mixed_logn ntk_mixed and logn together (the ReRoPE post's "NTK-RoPE-logn-mixed")
    rerope         ReRoPE: relative positions clipped at the window w = --rerope_window (softmax, RoPE-trained)
    leaky_rerope   leaky ReRoPE: beyond w positions grow by 1/k, k = --rerope_leak (softmax, RoPE-trained)
    rerope_logn    rerope with logn

A scheme a run cannot take (ntk on an LRU, rerope on linear attention) is skipped with a note. Output: one JSON
{"train_length", "runs": [{workdir, mixer, position}], "rows": [{mixer, position, scheme, mode, length, accuracy,
bpb}], "skipped": [...]}, a markdown table and a PNG (accuracy and bpb against length, one line per run and scheme)
next to it. Accuracy and bpb count every position of a window (the first T positions included), as the ReRoPE
post's table does.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from absl import app, flags

SCHEMES = ("trained", "ntk", "ntk_dynamic", "ntk_mixed", "yarn", "logn", "ntk_logn", "ntk_mixed_logn", "rerope",
           "leaky_rerope", "rerope_logn")
# scheme -> the rope_scaling it sets (docs/methods.md section 14), for the schemes that rescale RoPE frequencies
FREQUENCY_SCALINGS = {"ntk": "ntk", "ntk_logn": "ntk", "ntk_dynamic": "ntk_dynamic", "ntk_mixed": "ntk_mixed",
                      "ntk_mixed_logn": "ntk_mixed", "yarn": "yarn"}
LOGN_SCHEMES = ("logn", "ntk_logn", "ntk_mixed_logn", "rerope_logn")
MODES = ("nonrepeated", "repeated")

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command's flags (only when it runs as a program: experiments.generate, imported in the same
    process by tests, defines a --workdir of its own)."""
    flags.DEFINE_multi_string("workdir", [], "A finished lm run (repeat the flag for several runs).")
    flags.DEFINE_list("eval_lengths", ["1", "2", "4", "8"], "Test lengths as multiples of the training length.")
    flags.DEFINE_list("positions", list(SCHEMES), f"Schemes applied at test time, of {list(SCHEMES)}.")
    flags.DEFINE_list("modes", list(MODES), f"Of {list(MODES)}.")
    flags.DEFINE_integer("max_windows", 64, "Test windows per length (evenly spaced over the split).")
    flags.DEFINE_integer("batch_size", 8, "Windows per evaluation batch.")
    flags.DEFINE_integer("rerope_window", 0, "ReRoPE's window w (0: half the training length).")
    flags.DEFINE_float("rerope_leak", 16.0, "Leaky ReRoPE's k (> 1).")
    flags.DEFINE_string("out", "extrapolation.json", "Output JSON; the table (.md) and the plot (.png) go next to it.")


def scheme_options(scheme: str, options: dict[str, Any], supported: dict[str, tuple], train_length: int,
                   length: int, *, rerope_window: int, rerope_leak: float) -> dict[str, Any] | None:
    """The mixer options of `scheme` at test length `length` for a run trained at `train_length` with mixer
    `options` (None when the mixer cannot take the scheme: no such option, or a value it does not support)."""
    if scheme == "trained":
        return {}
    position = options.get("position")
    rope = position in ("rope", "rope_bias")
    scale = max(length / train_length, 1.0)
    changes: dict[str, Any] = {}
    if scheme in FREQUENCY_SCALINGS:
        if not rope:
            return None
        changes.update(rope_scaling=FREQUENCY_SCALINGS[scheme], train_length=train_length)
        if scheme != "ntk_dynamic":  # the dynamic scale follows each position, not the window
            changes.update(rope_scale=scale)
    if scheme in ("rerope", "leaky_rerope", "rerope_logn"):
        if not rope:
            return None
        changes.update(rope_scaling="rerope", rerope_window=rerope_window,
                       rerope_leak=rerope_leak if scheme == "leaky_rerope" else 0.0)
    if scheme in LOGN_SCHEMES:
        if position is None:  # not an attention mixer
            return None
        changes.update(logn_scaling=True, train_length=train_length)
    if any(name not in options for name in changes):
        return None
    if "rope_scaling" in changes and changes["rope_scaling"] not in supported.get("rope_scaling", ()):
        return None
    return changes


def repeated_windows(inputs, train_length: int):
    """Each window's first `train_length` bytes repeated to the window's length L: (inputs, next-byte labels)."""
    import numpy as np

    length = inputs.shape[1]
    tiled = np.tile(inputs[:, :train_length], (1, length // train_length + 2))
    return tiled[:, :length], tiled[:, 1:length + 1]


def evaluate_run(run: dict[str, Any], schemes: Sequence[str], multiples: Sequence[int], modes: Sequence[str], *,
                 max_windows: int, batch_size: int, rerope_window: int, rerope_leak: float,
                 log=print) -> tuple[list[dict], list[str]]:
    """Rows of accuracy and bpb for one restored run (see the module docstring), and the skipped schemes."""
    import jax
    import ml_collections
    import numpy as np

    from experiments import data as data_lib
    from experiments.trainer import build_model, make_eval_step, model_inputs
    from lra import corpus
    from models.registry import MixerContext, resolve_mixer

    config, spec = run["config"], run["spec"]
    train_length = spec.seq_len
    mixer_name = config.model.mixer
    section = config.model.get(mixer_name)
    trained = resolve_mixer(mixer_name, section.to_dict() if section is not None else {}, length=train_length)
    options = trained.as_dict()
    position = options.get("position", "none (recurrent)")
    supported = trained.contract.choices()
    splits = corpus.load_corpus(config.data.lm.format, config.data.data_dir, data_lib.cache_root(config),
                                split_seed=config.data.lm.split_seed)
    rows, skipped = [], []
    for scheme in schemes:
        for multiple in multiples:
            length = int(multiple) * train_length
            changes = scheme_options(scheme, options, supported, train_length, length,
                                     rerope_window=rerope_window or max(train_length // 2, 1), rerope_leak=rerope_leak)
            problems = [] if changes is None else trained.contract.check_options(
                {**options, **changes}, MixerContext(d_model=config.model.d_model, length=length))
            if changes is None or problems:
                why = f" ({problems[0][0]}: {problems[0][1]})" if problems else ""
                skipped.append(f"{mixer_name} ({position}): {scheme} does not apply{why}")
                break
            test_config = ml_collections.ConfigDict(config.to_dict())
            test_config.model[mixer_name].update(changes)
            test_config.data.seq_len = length
            for name in ("max_decode_len", "l_max", "trunc_len"):
                if name in test_config.model[mixer_name] and test_config.model[mixer_name][name]:
                    test_config.model[mixer_name][name] = max(test_config.model[mixer_name][name], length)
            test_spec = data_lib.task_spec(test_config)
            model = build_model(test_config, test_spec)
            prepare = functools.partial(model_inputs, spec=test_spec, input_encoding=config.model.input_encoding)
            step = jax.jit(make_eval_step(model, prepare))
            window = corpus.windows(splits["test"], length, "test", max_windows=max_windows)
            for mode in modes:
                inputs, labels = np.asarray(window.inputs), np.asarray(window.labels)
                if mode == "repeated":
                    inputs, labels = repeated_windows(inputs, train_length)
                totals = {"correct": 0.0, "loss": 0.0, "count": 0.0}
                state = {"params": run["variables"]["params"],
                         "collections": {k: v for k, v in run["variables"].items() if k != "params"}}
                for start in range(0, len(inputs), batch_size):
                    rows_in = inputs[start:start + batch_size].astype(np.int32)
                    batch = {"inputs": rows_in, "labels": labels[start:start + batch_size].astype(np.int32),
                             "weights": np.ones(len(rows_in), np.float32)}
                    out = step(state, batch)
                    for key in totals:
                        totals[key] += float(out[key])
                row = {"mixer": mixer_name, "position": position, "scheme": scheme, "mode": mode, "length": length,
                       "accuracy": totals["correct"] / totals["count"],
                       "bpb": totals["loss"] / totals["count"] / math.log(2)}
                rows.append(row)
                log(f"{mixer_name:10s} {position:10s} {scheme:13s} {mode:11s} L={length:6d}  accuracy "
                    f"{row['accuracy']:.4f}  bpb {row['bpb']:.3f}")
    return rows, skipped


def markdown_table(rows: list[dict], train_length: int) -> str:
    """Accuracy / bpb per (mixer, position, scheme) and (mode, length)."""
    columns = sorted({(r["mode"], r["length"]) for r in rows}, key=lambda c: (c[0] != "nonrepeated", c[1]))
    keys = list(dict.fromkeys((r["mixer"], r["position"], r["scheme"]) for r in rows))
    cell = {(r["mixer"], r["position"], r["scheme"], r["mode"], r["length"]): r for r in rows}
    head = "| mixer | trained position | scheme | " + " | ".join(
        f"{m} {length} ({length // train_length}x)" for m, length in columns) + " |"
    lines = [head, "|" + "---|" * (3 + len(columns))]
    for key in keys:
        values = [cell.get((*key, m, length)) for m, length in columns]
        lines.append("| " + " | ".join(key) + " | " + " | ".join(
            f"{v['accuracy']:.3f} / {v['bpb']:.2f}" if v else "" for v in values) + " |")
    return "\n".join(lines) + "\n\nEach cell: next-byte accuracy / bits per byte.\n"


def plot(rows: list[dict], path: str) -> None:
    """Accuracy and bpb against test length, one line per (mixer, scheme), one row of panels per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in rows))
    keys = list(dict.fromkeys((r["mixer"], r["position"], r["scheme"]) for r in rows))
    palette = list(plt.cm.tab20.colors) + list(plt.cm.tab20b.colors) + list(plt.cm.tab20c.colors)
    colours = [palette[n % len(palette)] for n in range(len(keys))]  # one distinct colour per line (up to 60)
    fig, axes = plt.subplots(len(modes), 2, figsize=(12, 4.5 * len(modes)), squeeze=False)
    for i, mode in enumerate(modes):
        for n, key in enumerate(keys):
            points = sorted((r["length"], r["accuracy"], r["bpb"]) for r in rows
                            if (r["mixer"], r["position"], r["scheme"]) == key and r["mode"] == mode)
            if not points:
                continue
            label = f"{key[0]} ({key[1]}) {key[2]}"
            style = dict(marker="o", label=label, color=colours[n], linestyle="-" if key[2] == "trained" else "--")
            axes[i][0].plot([p[0] for p in points], [p[1] for p in points], **style)
            axes[i][1].plot([p[0] for p in points], [p[2] for p in points], **style)
        for j, what in enumerate(("next-byte accuracy", "bits per byte")):
            axes[i][j].set_xscale("log", base=2)
            axes[i][j].set_xlabel("test length (bytes)")
            axes[i][j].set_title(f"{what}, {mode}")
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PROGRAM = "experiments.extrapolate"


def main(argv: Sequence[str]) -> None:
    """The command (see the module docstring)."""
    from experiments import cli
    from experiments.runs import GenerateError, load_run
    from experiments.trainer import ConfigValueError
    from experiments.validation import ConfigError
    from experiments.workdir import WorkdirError

    if len(argv) > 1:
        cli.usage_exit(f"unexpected arguments {' '.join(argv[1:])!r}", PROGRAM)
    if not FLAGS.workdir:
        cli.usage_exit("--workdir: expected at least one finished lm run", PROGRAM)
    for name, values, allowed in (("positions", FLAGS.positions, SCHEMES), ("modes", FLAGS.modes, MODES)):
        bad = [v for v in values if v not in allowed]
        if bad:
            cli.usage_exit(f"--{name}: unknown {', '.join(map(repr, bad))}; expected some of {', '.join(allowed)}",
                           PROGRAM)
    try:
        multiples = [int(v) for v in FLAGS.eval_lengths]
        if not multiples or min(multiples) < 1:
            raise ValueError
    except ValueError:
        cli.usage_exit(f"--eval_lengths={','.join(FLAGS.eval_lengths)}: expected positive integers (multiples of the "
                       "training length)", PROGRAM)
    cli.quiet_library_logs()
    rows, skipped, runs, train_lengths = [], [], [], set()
    for workdir in FLAGS.workdir:
        try:
            run = load_run(workdir)
        except (GenerateError, WorkdirError, ConfigError, ConfigValueError) as error:
            cli.usage_exit(str(error), PROGRAM)
        except cli.user_errors() as error:  # a damaged checkpoint, an unreadable file
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        train_lengths.add(run["spec"].seq_len)
        found, missed = evaluate_run(run, FLAGS.positions, multiples, FLAGS.modes, max_windows=FLAGS.max_windows,
                                     batch_size=FLAGS.batch_size, rerope_window=FLAGS.rerope_window,
                                     rerope_leak=FLAGS.rerope_leak)
        rows += found
        skipped += missed
        runs.append({"workdir": run["workdir"], "mixer": run["config"].model.mixer,
                     "position": found[0]["position"] if found else None, "step": run["step"]})
    if len(train_lengths) != 1:
        cli.usage_exit(f"--workdir: the runs trained at different lengths {sorted(train_lengths)}; compare runs of "
                       "one training length", PROGRAM)
    train_length = train_lengths.pop()
    out = os.path.abspath(FLAGS.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"train_length": train_length, "runs": runs, "rows": rows, "skipped": skipped}, f, indent=1)
    stem = os.path.splitext(out)[0]
    with open(stem + ".md", "w") as f:
        f.write(markdown_table(rows, train_length))
    plot(rows, stem + ".png")
    for note in skipped:
        print(f"skipped: {note}", file=sys.stderr)
    print(f"{len(rows)} rows: {out}, {stem}.md, {stem}.png")


if __name__ == "__main__":
    from experiments import cli

    define_flags()
    app.run(main, flags_parser=cli.flags_parser(PROGRAM))
