"""Rewards with TRL's signature, on real toolchains (cargo/clippy/rustfmt, ruff, javac) in the sandbox."""

import math
import pickle

import pytest

from editloop.completion.value import ValueInput
from editloop.sandbox import ExecutionResult
from editloop.training.rewards import (
    CombinedReward,
    ExecutionReward,
    RewardWeights,
    ShowAbstain,
    SyntaxValidity,
    ToolWeights,
    ValueModelPredictor,
    ValueReward,
    edit_similarity,
    exact_match,
    line_match,
)
from editloop.training.rewards.execution import ToolTerms
from editloop.training.value import ValueRow, train_value_model

# Keywords TRL adds to every reward call; rewards must take and ignore them.
TRL_EXTRAS = {"trainer_state": None, "log_extra": lambda *a, **k: None}


def columns(n: int, **values: str | None) -> dict[str, list[str | None]]:
    return {key: [value] * n for key, value in values.items()}


# --- match ---------------------------------------------------------------------------------


def test_match_rewards_against_the_kept_text() -> None:
    completions = ["return a + b", "return a + b  \n", "return a - b", "", "x\ny\nq"]
    kept = ["return a + b"] * 4 + ["x\ny\nz"]
    kwargs = {"reference": kept, **TRL_EXTRAS}
    assert exact_match(["p"] * 5, completions, None, **kwargs) == [1.0, 1.0, 0.0, 0.0, 0.0]
    similarity = edit_similarity(["p"] * 5, completions, None, **kwargs)
    assert similarity[:2] == [1.0, 1.0] and similarity[3] == 0.0
    assert similarity[2] == pytest.approx(1 - 1 / 12)  # one character of twelve differs
    assert line_match(["p"] * 5, completions, None, **kwargs)[4] == pytest.approx(2 / 3)


def test_match_without_a_kept_text_is_no_verdict() -> None:
    assert edit_similarity(completions=["x"], reference=[None]) == [None]
    assert exact_match(completions=["x"]) == [None]


# --- syntax --------------------------------------------------------------------------------


def test_syntax_python_uses_tree_sitter_and_compile() -> None:
    reward = SyntaxValidity()
    prefix = "def f(xs):\n    for x in xs:\n        "
    completions = ["print(x)", "print(x", "return x", "break"]
    kwargs = columns(4, prefix=prefix, suffix="\n", language="python", reference="print(x)")
    assert reward(completions=completions, **kwargs) == [1.0, 0.0, 1.0, 1.0]
    # `break` outside a loop parses, but CPython refuses to compile it.
    outside = columns(1, prefix="def f():\n    ", suffix="\n", language="python", reference="pass")
    assert reward(completions=["break"], **outside) == [0.0]


def test_syntax_of_a_broken_file_falls_back_on_tree_sitter() -> None:
    # The file does not compile with the kept text either (a stray `)` below), so compile() cannot judge.
    kwargs = columns(2, prefix="x = ", suffix="\n\n\ny = )\n", language="python", reference="1")
    assert SyntaxValidity()(completions=["1", "1]"], **kwargs) == [1.0, 0.0]


def test_syntax_other_languages_and_unknown_ones() -> None:
    reward = SyntaxValidity()
    rust = columns(2, prefix="fn f() -> i32 {\n    ", suffix="\n}\n", filepath="src/lib.rs")
    assert reward(completions=["1 + 2", "1 + (2"], **rust) == [1.0, 0.0]
    unknown = columns(1, prefix="a", suffix="b", language="cobol")
    assert reward(completions=["x"], **unknown) == [None]


# --- execution on real toolchains ------------------------------------------------------------

RUST_PREFIX = "pub fn add(a: i32, b: i32) -> i32 {\n    "
RUST_TESTS = """#[cfg(test)]
mod tests {
    #[test]
    fn adds() {
        assert_eq!(super::add(2, 3), 5);
    }
}"""


def test_rust_compile_clippy_rustfmt_tests() -> None:
    reward = ExecutionReward()
    completions = ["a + b", "return a + b;", "a - b", "a +", "a  +  b"]
    kwargs = columns(5, prefix=RUST_PREFIX, suffix="\n}\n", reference="a + b", filepath="src/lib.rs")
    kwargs["tests"] = [RUST_TESTS] * 5
    terms = reward.terms(completions, **kwargs)
    assert terms[0] == ToolTerms(compile=1.0, tests=1.0, lint=1.0, format=1.0)
    assert terms[1] == ToolTerms(compile=1.0, tests=1.0, lint=0.5, format=1.0)  # clippy::needless_return
    assert terms[2] == ToolTerms(compile=1.0, tests=0.0, lint=1.0, format=1.0)
    assert terms[3] == ToolTerms(compile=0.0, tests=0.0, lint=0.0, format=0.0)
    assert terms[4].format == 0.0 and terms[4].compile == 1.0  # rustfmt --check wants `a + b`
    scores = reward(completions=completions, **kwargs, **TRL_EXTRAS)
    assert scores[:4] == [1.0, pytest.approx(0.9), pytest.approx(0.7), 0.0]  # 0.4/0.3/0.2/0.1 weights


def test_python_compile_ruff_format_tests() -> None:
    reward = ExecutionReward()
    prefix = "import math\n\n\ndef hyp(a, b):\n    return "
    completions = ["math.sqrt(a * a + b * b)", "math.sqrt(a*a + b*b)", "a + b", "math.sqrt(", "undefined"]
    kwargs = columns(5, prefix=prefix, suffix="\n", reference="math.sqrt(a * a + b * b)", language="python")
    kwargs["tests"] = ["assert hyp(3, 4) == 5.0"] * 5
    terms = reward.terms(completions, **kwargs)
    assert terms[0] == ToolTerms(compile=1.0, tests=1.0, lint=1.0, format=1.0)
    assert terms[1] == ToolTerms(compile=1.0, tests=1.0, lint=1.0, format=0.0)  # ruff format spacing
    assert terms[2].tests == 0.0 and terms[2].compile == 1.0
    assert terms[3] == ToolTerms(compile=0.0, tests=0.0, lint=0.0, format=0.0)
    # Two new ruff issues: F821 undefined name, and F401 now that `math` goes unused.
    assert terms[4].lint == pytest.approx(1 / 3) and terms[4].tests == 0.0


def test_java_javac_lint_tests() -> None:
    reward = ExecutionReward()
    prefix = "import java.util.*;\n\npublic class Calc {\n    public static int add(int a, int b) {\n        "
    tests = (
        "public class CalcTest {\n    public static void main(String[] args) {\n"
        "        if (Calc.add(2, 3) != 5) throw new AssertionError();\n    }\n}\n"
    )
    raw_types = "List l = new ArrayList(); l.add(a); return a + b;"
    completions = ["return a + b;", raw_types, "return a - b;", "return a +;"]
    kwargs = columns(4, prefix=prefix, suffix="\n    }\n}\n", reference="return a + b;", filepath="Calc.java")
    kwargs["tests"] = [tests] * 4
    terms = reward.terms(completions, **kwargs)
    assert terms[0] == ToolTerms(compile=1.0, tests=1.0, lint=1.0, format=None)
    assert terms[1].compile == 1.0 and terms[1].tests == 1.0 and terms[1].lint < 1.0  # -Xlint: raw types
    assert terms[2].tests == 0.0
    assert terms[3] == ToolTerms(compile=0.0, tests=0.0, lint=0.0, format=None)


def test_checks_the_kept_text_fails_do_not_count() -> None:
    # `helper` lives elsewhere in the crate: with the kept text the file does not compile alone either.
    prefix = "pub fn f() -> i32 {\n    "
    kwargs = columns(2, prefix=prefix, suffix="\n}\n", reference="helper()", filepath="a.rs")
    terms = ExecutionReward().terms(["helper()", "1"], **kwargs)
    assert terms[0].compile is None and terms[1].compile is None and terms[1].lint is None


class BrokenSandbox:
    """A sandbox whose every run fails to set up: a host failure no real code can provoke on demand."""

    def run(self, command, **kwargs) -> ExecutionResult:
        return ExecutionResult(False, None, "", "", sandbox_error="bwrap: setting up uid map: denied")


def test_sandbox_failure_is_no_reward_not_a_failed_test() -> None:
    reward = ExecutionReward(sandbox=BrokenSandbox())
    kwargs = columns(1, prefix=RUST_PREFIX, suffix="\n}\n", reference="a + b", filepath="lib.rs")
    kwargs["tests"] = [RUST_TESTS]
    assert reward(completions=["a + b"], **kwargs) == [None]
    python = columns(1, prefix="x = ", suffix="\n", reference="1", language="python")
    # Only compile(), which runs in process, still has a verdict.
    assert reward.terms(["1"], **python) == [ToolTerms(compile=1.0)]


def test_no_bubblewrap_means_no_execution_reward(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    kwargs = columns(1, prefix="x = ", suffix="\n", reference="1", language="python")
    assert ExecutionReward()(completions=["1"], **kwargs) == [None]


# --- value, show/abstain, combined ------------------------------------------------------------


class LengthPredictor:
    """A predictor that likes short completions: any object with ``predict`` serves."""

    def predict(self, prefix: str, suffix: str, candidate: str) -> float:
        return 1.0 / (1 + len(candidate))


def test_value_reward_with_editlooops_value_model() -> None:
    rows = [
        ValueRow(ValueInput("x = ", "\n", text, [-0.1 if good else -3.0] * 3, good), accepted=good)
        for good, text in [(True, "1024"), (False, "(((("), (True, "y + 10"), (False, "]]]")] * 5
    ]
    reward = ValueReward(ValueModelPredictor(train_value_model(rows)))
    scores = reward(completions=["x + 1", ""], prefix=["y = "] * 2, suffix=["\n"] * 2)
    assert 0.0 <= scores[0] <= 1.0 and scores[1] is None
    short = ValueReward(LengthPredictor())(completions=["ab"], prefix=["p"], suffix=["s"])
    assert short == [pytest.approx(1 / 3)]


def test_show_abstain_mapping() -> None:
    kept = ["return a + b"] * 4
    show = ShowAbstain()
    completions = ["return a + b", "return a + c", "zzz", "  \n"]
    assert show(completions=completions, reference=kept) == [0.75, 0.75, -0.25, 0.0]
    # With a value model, what the server would not show (score under the threshold) is an abstention.
    gated = ShowAbstain(value_model=LengthPredictor(), abstain_threshold=0.1)
    scores = gated(
        completions=["return a + b", "zzz"], reference=kept[:2], prefix=["p"] * 2, suffix=["s"] * 2
    )
    assert scores == [0.0, -0.25]
    assert show(completions=["x"], reference=[None]) == [None]


def test_combined_weights_per_language_and_logs_terms() -> None:
    logged: dict[str, float] = {}
    only_match = RewardWeights(match=1.0, syntax=0.0, execution=0.0, value=0.0, show=0.0)
    reward = CombinedReward(weights={"python": only_match}, execution=False)
    kwargs = columns(2, prefix="x = ", suffix="\n", reference="a + b", language="python")
    log_metric = lambda k, v: logged.update({k: v})  # noqa: E731
    scores = reward(completions=["a + b", "a"], log_metric=log_metric, **kwargs, **TRL_EXTRAS)
    assert scores == [1.0, pytest.approx(0.2)]
    assert logged["rewards/combined/match"] == pytest.approx(0.6)
    assert logged["rewards/combined/show"] == pytest.approx((0.75 - 0.25) / 2)
    # Other languages use the default weights: syntax and show now count too.
    rust = columns(1, prefix="fn f() -> i32 {\n    ", suffix="\n}\n", reference="1", filepath="lib.rs")
    assert reward(completions=["1"], **rust) == [pytest.approx((1.0 + 0.25 + 0.5 * 0.75) / 1.75)]


def test_combined_with_execution_and_value_model() -> None:
    reward = CombinedReward(value_model=LengthPredictor())
    kwargs = columns(2, prefix=RUST_PREFIX, suffix="\n}\n", reference="a + b", filepath="src/lib.rs")
    kwargs["tests"] = [RUST_TESTS] * 2
    table = reward.terms(["a + b", "a - b"], **kwargs)
    assert table["execution"] == [1.0, pytest.approx(0.7)]
    assert table["value"] == [pytest.approx(1 / 6), pytest.approx(1 / 6)]
    scores = reward(completions=["a + b", "a - b"], **kwargs)
    assert scores[0] > scores[1]


def test_combined_is_none_when_nothing_applies() -> None:
    reward = CombinedReward(execution=False)
    kwargs = {"prefix": ["a"], "suffix": ["b"], "language": ["cobol"], "reference": [None]}
    assert reward(completions=["x"], **kwargs) == [None]
    assert RewardWeights().tools == ToolWeights()


@pytest.mark.parametrize(
    "reward",
    [
        SyntaxValidity(),
        ExecutionReward(),
        ShowAbstain(),
        ValueReward(LengthPredictor()),
        CombinedReward(value_model=LengthPredictor()),
    ],
)
def test_rewards_pickle(reward) -> None:
    copy = pickle.loads(pickle.dumps(reward))
    kwargs = columns(1, prefix="x = ", suffix="\n", reference="1", language="python")
    assert copy.__name__ == reward.__name__
    got, want = copy(completions=["1"], **kwargs), reward(completions=["1"], **kwargs)
    assert got == want and not any(v is not None and math.isnan(v) for v in got)
