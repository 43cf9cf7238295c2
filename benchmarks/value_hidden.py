"""Does the language model's hidden state help the value model? An offline test on recorded feedback.

Builds the value rows of a feedback archive as a cycle does (``training/dataset.py``), gives every
row's candidate the hidden state VERSION has after the prompt the engine would build and the
candidate's tokens (:meth:`LlamaBackend.hidden_states`), then fits the cycle's value model with and
without those features on the training rows and judges both on the held-out ones, next to the
log-prob score: AUC, and the cycle's ranker A/B (each ranker's first choice per request, shown at a
threshold calibrated on the other half of the requests, scored by the show reward).

    python benchmarks/value_hidden.py --feedback HOME/training/feedback.jsonl --home HOME --version v4

Serving does not compute the feature yet; this measures whether it is worth computing.
"""

import argparse
import json
import time
from pathlib import Path

from editloop.models.llama import LlamaBackend
from editloop.models.registry import Registry
from editloop.training import value
from editloop.training.dataset import FeedbackArchive, build_dataset

MAX_NEW_TOKENS = 48  # the prompt's room for the candidate, as a line request leaves it


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
    train, heldout = data.value_train, data.value_heldout
    backend = LlamaBackend.from_version(Registry(args.home / "models").get(args.version), max_candidates=1)
    started = time.perf_counter()
    hidden_train = value.with_hidden_states(train, backend, MAX_NEW_TOKENS)
    hidden_heldout = value.with_hidden_states(heldout, backend, MAX_NEW_TOKENS)
    seconds = time.perf_counter() - started
    backend.close()
    plain, hidden = value.train_value_model(train), value.train_value_model(hidden_train)
    scores = {
        "logprob": value.logprob_scores(heldout),
        "value": plain.predict_many([r.input for r in heldout]),
        "value_hidden": hidden.predict_many([r.input for r in hidden_heldout]),
    }
    labels = [r.label for r in heldout]
    report = {
        "version": args.version,
        "useful_chars": args.useful_chars,
        "rows": {"train": len(train), "heldout": len(heldout), "heldout_positives": sum(labels)},
        "hidden_width": hidden.hidden_width,
        "hidden_seconds": round(seconds, 1),
        "l2": {"value": plain.l2, "value_hidden": hidden.l2},
        "auc": {name: round(value.auc(s, labels) or 0.0, 4) for name, s in scores.items()},
        "ab": value.ranker_ab(heldout, scores, 0.05),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
