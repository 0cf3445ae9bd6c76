"""Long Range Arena tasks: specs, readers, generators, tokenisers and deterministic batching (numpy; Pillow for
the Pathfinder images).

Task specs and the Split container: lra/tasks.py. Readers and generators, one module per task family:
listops/ (generator + official TSV, a package), text.py (IMDB), retrieval.py (AAN), image.py (CIFAR-10, IDX),
pathfinder/ (generator + official layout, a package). bytes.py is the byte tokeniser; batching.py the batch order;
files.py opens data files (regular files only, size-bounded, never blocking).
"""

from lra.batching import BatchSchedule, eval_batches, num_eval_batches
from lra.errors import LRADataError
from lra.tasks import (
    DataContext,
    DataRequest,
    DataSource,
    HeadKind,
    Split,
    TaskSpec,
    UnknownTaskError,
    get_task,
    majority_rate,
    register_task,
    task_names,
)

__all__ = [
    "BatchSchedule",
    "DataContext",
    "DataRequest",
    "DataSource",
    "HeadKind",
    "LRADataError",
    "Split",
    "TaskSpec",
    "UnknownTaskError",
    "eval_batches",
    "get_task",
    "majority_rate",
    "num_eval_batches",
    "register_task",
    "task_names",
]

# The LM task registers itself with its corpus readers (after the registry above is complete).
from lra import corpus  # noqa: E402,F401
