"""Does the language model's hidden state help the value model? The cycle's two value models, offline.

Builds the value rows of a feedback archive as a cycle does (``training/dataset.py``) and trains
and judges both value models a cycle trains when it republishes VERSION's weights: the plain one
(``train_value``) and the one that also reads VERSION's hidden state after each candidate
(``hidden_ranker``). Each report gives held-out AUC against log-prob's and the ranker A/B (each
ranker's first choice per request, shown at a threshold calibrated on the other half of the
requests, scored by the show reward).

    python benchmarks/value_hidden.py --feedback HOME/training/feedback.jsonl --home HOME --version v4
"""

import argparse
import json
from pathlib import Path

from editloop.models.llama import LlamaBackend
from editloop.models.registry import Registry
from editloop.settings import Settings
from editloop.training import value
from editloop.training.cycle import hidden_ranker, train_value
from editloop.training.dataset import FeedbackArchive, build_dataset

DEFAULT_THRESHOLD = 0.05
# The prompt's room for the candidate, as a line request leaves it (and as the cycle builds it).
MAX_NEW_TOKENS = Settings.model_fields["default_max_tokens"].default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feedback", type=Path, required=True, help="a cycle's feedback.jsonl archive")
    parser.add_argument("--home", type=Path, required=True, help="the editloop home holding VERSION")
    parser.add_argument("--version", required=True, help="the version whose hidden states are read")
    parser.add_argument(
        "--useful-chars", type=int, default=value.USEFUL_CHARS, help="the label's USEFUL_CHARS"
    )
    args = parser.parse_args()
    value.USEFUL_CHARS = args.useful_chars
    data = build_dataset(FeedbackArchive(args.feedback).events())
    _, plain = train_value(data, DEFAULT_THRESHOLD)
    backend = LlamaBackend.from_version(Registry(args.home / "models").get(args.version), max_candidates=1)
    try:
        _, _, hidden = hidden_ranker(data, backend, DEFAULT_THRESHOLD, MAX_NEW_TOKENS)
    finally:
        backend.close()
    report = {"version": args.version, "useful_chars": args.useful_chars, "plain": plain, "hidden": hidden}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
