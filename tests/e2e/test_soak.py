"""experiments/soak.py, briefly: a few kills of the tiny trainer (SIGTERM, SIGKILL at a random step, SIGKILL in a
checkpoint write), restarts, and a bitwise comparison with the uninterrupted run. The long soak is for people:
python -m experiments.soak --wall_seconds=..."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from experiments import soak

STEPS = 30


def test_a_short_soak_resumes_every_time_and_matches_the_uninterrupted_run(tmp_path):
    # Kills (SIGTERM, SIGKILL at random, aimed at a checkpoint write or at the metrics rewrite) and injected faults
    # (torn metrics line, damaged newest checkpoint, two launches at once); whether each kill is sent before the
    # launch ends depends on timing, so only the outcome is asserted strictly: every cycle finishes, matches the
    # uninterrupted run bitwise, and every injected fault was repaired.
    options = soak.SoakOptions(workdir=str(tmp_path / "soak"), wall_seconds=120, max_kills=3, num_steps=STEPS,
                               checkpoint_every=2, eval_every=10, seed=18, fast_compile=True, fault_fraction=0.6)
    report = soak.run_soak(options)
    totals = report["totals"]
    print(soak.summary(report))
    assert report["ok"], json.dumps(totals, indent=1)
    assert totals["failures"] == 0 and totals["cycles"] == totals["cycles_finished"] >= 1
    assert totals["params_match"] and totals["state_match"] and totals["metrics_match"] and totals["results_match"]
    assert 1 <= totals["kills"] <= 3 and totals["restarts"] >= totals["kills"]
    assert totals["resumes"] >= 1  # at least one launch continued from a checkpoint
    injected = totals["injected"]
    assert sum(injected.values()) >= 1, "no fault was injected: choose another seed"
    assert totals["torn_lines_dropped"] == injected["torn_line"]
    assert totals["damaged_moved_aside"] == injected["damaged_checkpoint"]
    assert totals["stale_locks_taken_over"] >= 1  # every SIGKILL leaves the lock behind
    with open(tmp_path / "soak" / "soak_report.json") as f:
        written = json.load(f)
    assert written["totals"] == totals
    assert sum(len(c["events"]) for c in written["cycles"]) + 2 * injected["contention"] == totals["launches"]

    # The comparison is not vacuous: one parameter changed by one ulp is found.
    reference, cycle = tmp_path / "soak" / "reference", tmp_path / "soak" / f"cycle_{totals['cycles'] - 1}"
    assert soak.compare(str(reference), str(cycle), STEPS)["state_match"]
    tampered = tmp_path / "tampered"
    shutil.copytree(cycle, tampered, ignore=shutil.ignore_patterns("checkpoints"))
    state = ocp.StandardCheckpointer().restore(str(cycle / "checkpoints" / str(STEPS) / "state"))
    leaves, treedef = jax.tree_util.tree_flatten(state["params"])
    leaves[0] = np.nextafter(leaves[0], np.inf).astype(leaves[0].dtype)
    state["params"] = jax.tree_util.tree_unflatten(treedef, leaves)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(str(tampered / "checkpoints" / str(STEPS) / "state"), state)
    checkpointer.wait_until_finished()
    found = soak.compare(str(reference), str(tampered), STEPS)
    assert not found["params_match"] and not found["state_match"] and len(found["differing_leaves"]) == 1
