"""ListOps: the generator, the official TSV format, the tokeniser and the loader (docs/lra_data.md sections 3.1, 4).

An example is a nested expression over the digits 0-9 with the operators MIN, MAX, MED (median, truncated to an
int) and SM (sum modulo 10); the label is its value, 0-9. Tokens are the 15 symbols plus padding (vocab 16, pad 0,
no OOV id). One module per job:

  generate.py  the generator, a transcription of LRA's `lra_benchmarks/data/listops.py` (docs/lra_data.md
               section 4): trees, their string form and value, and `generate_listops`, seeded and independent
               of the number of worker processes
  tsv.py       the official files `<task>_{train,val,test}.tsv` (reader, writer) and the fixed tokeniser
               (`VOCAB`, `tokenize`, padding and truncation)
  dataset.py   `load_listops` (through a token cache), `ensure_generated` (a generated dataset cached on
               disk), and the config section's contract (`GENERATOR_RANGES`, `check_generator_config`)
  cli.py       `python -m lra.listops`

Everything other code uses is re-exported here: `from lra import listops; listops.load_listops(...)`.

Command line (mirrors LRA's flags; writes the official files):
    python -m lra.listops --output_dir=/tmp/listops --num_train_samples=96000 --seed=0
"""

from lra.listops.cli import main
from lra.listops.dataset import (
    GENERATOR_RANGES,
    check_generator_config,
    ensure_generated,
    generation_parameters,
    load_listops,
)
from lra.listops.generate import (
    CHUNK_SIZE,
    END,
    GENERATOR_VERSION,
    OPERATORS,
    VALUE_P,
    VALUES,
    Tree,
    apply_operator,
    evaluate_source,
    generate_listops,
    generate_tree,
    max_tree_length,
    to_string,
    to_value,
)

# Private helpers reached through the package (redundant aliases: explicit re-exports): the worker pool of the
# generators (lra/pathfinder/dataset.py and reader.py) and the generator's parameter check.
from lra.listops.generate import _check_generation_parameters as _check_generation_parameters
from lra.listops.generate import _default_num_workers as _default_num_workers
from lra.listops.generate import _worker_context as _worker_context
from lra.listops.tsv import (
    ID_TO_SYMBOL,
    MAX_LINE_BYTES,
    PAD_ID,
    SPLITS,
    TOKENIZER_VERSION,
    VOCAB,
    VOCAB_SIZE,
    detokenize,
    pad_ragged,
    read_tsv,
    split_path,
    tokenize,
    tokenize_ragged,
    write_dataset,
    write_tsv,
)

__all__ = [
    "CHUNK_SIZE",
    "END",
    "GENERATOR_RANGES",
    "GENERATOR_VERSION",
    "ID_TO_SYMBOL",
    "MAX_LINE_BYTES",
    "OPERATORS",
    "PAD_ID",
    "SPLITS",
    "TOKENIZER_VERSION",
    "VALUES",
    "VALUE_P",
    "VOCAB",
    "VOCAB_SIZE",
    "Tree",
    "apply_operator",
    "check_generator_config",
    "detokenize",
    "ensure_generated",
    "evaluate_source",
    "generate_listops",
    "generate_tree",
    "generation_parameters",
    "load_listops",
    "main",
    "max_tree_length",
    "pad_ragged",
    "read_tsv",
    "split_path",
    "to_string",
    "to_value",
    "tokenize",
    "tokenize_ragged",
    "write_dataset",
    "write_tsv",
]
