"""The README and ``docs/`` against the code: links, keys, arguments, thresholds, early stopping.

The documentation ships with the package, so what it states is checked here: every relative link
(and anchor) resolves, nothing cites a file outside the repository, every key the docs name is
logged by the code and every contract key is documented, the README's argument table is the
signature of ``LPLRMonitor.__init__`` (names and defaults), the lazy-regime thresholds quoted are
those of ``lightning_lplr.report.regimes``, and the README's ``EarlyStopping`` example, run in real
fits, stops exactly when the run leaves the lazy regime and never otherwise.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import re
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import EarlyStopping

from lightning_lplr import LPLRMonitor
from lightning_lplr.callbacks._model_call import LABEL_KEYS
from lightning_lplr.functional import linearization
from lightning_lplr.report.regimes import REGIME_THRESHOLDS
from lightning_lplr.reporting.keys import ALL_KEYS, HISTOGRAM_KEYS, SKIP_KEYS
from tests._lightning_models import SmallNet, loader, regression_data, trainer_kwargs

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
DOC_FILES = [README, *sorted(DOCS.glob("*.md"))]
PACKAGE = ROOT / "lightning_lplr"

CONTRACT = set(ALL_KEYS) | set(SKIP_KEYS)

# Names the docs may give although they are not contract keys. Each must still be produced by the
# code (checked below), so the docs cannot keep a name the code dropped.
LIN_SKIPS = {
    f"skipped/lin_{reason}"
    for reason in (
        linearization.REASON_NO_FORWARD_AD_FORMULA,
        linearization.REASON_CUSTOM_FUNCTION,
        linearization.REASON_INPLACE_ON_CAPTURED,
    )
}
DOCUMENTED_EXTRAS: set[str] = {
    *HISTOGRAM_KEYS,  # TensorBoard histogram tags, not scalar keys
    "region/inside_fraction",  # aggregates of monitor.summary()
    "ntk/lambda_min_lowest",
}

KEY_GROUPS = "ntk|ntk_trace|ntk_pseudo|ntk_loss_gram|param|pl|rate|region|curv|lin|cost|skipped"
KEY_TOKEN = re.compile(rf"^(?:lplr/)?((?:{KEY_GROUPS})/[a-z0-9_]+)$")
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks."""
    return FENCE.sub("", text)


def _keys_named(text: str) -> set[str]:
    """Every logged-key-like inline code span of ``text`` (prefix ``lplr/`` dropped)."""
    keys = set()
    for span in INLINE_CODE.findall(_prose(text)):
        match = KEY_TOKEN.match(span.strip())
        if match:
            keys.add(match.group(1))
    return keys


def _slug(heading: str) -> str:
    """The anchor GitHub gives a markdown heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", _prose(_text(path)), re.MULTILINE)
    return {_slug(h) for h in headings}


def _fenced_blocks(text: str) -> list[list[str]]:
    return [block.splitlines()[1:-1] for block in FENCE.findall(text)]


# --------------------------------------------------------------------------------------------
# The files themselves
# --------------------------------------------------------------------------------------------


def test_the_pages_exist() -> None:
    names = {p.name for p in DOCS.glob("*.md")}
    expected = {"index.md", "keys.md", "kernels.md", "theory.md", "conventions.md", "ddp.md", "cost.md"}
    assert expected | {"report.md", "normalization.md"} <= names


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_nothing_cites_a_file_outside_the_repository(path: Path) -> None:
    text = _text(path)
    for needle in ("DESIGN.md", "../shared", "shared/"):
        assert needle not in text, f"{path.name} mentions {needle!r}: users do not have it"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    prose = INLINE_CODE.sub("", _prose(_text(path)))
    links = LINK.findall(prose)
    assert links, f"{path.name} links nowhere"
    for target in links:
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        assert resolved.exists(), f"{path.name}: link {target!r} points to a missing file"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{path.name}: no heading for #{anchor} in {resolved.name}"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_every_table_row_has_the_header_s_cells(path: Path) -> None:
    """A ``|`` inside a code span must be escaped (``\\|``), or GitHub splits the cell."""
    width = None
    for line in _prose(_text(path)).splitlines():
        if not line.startswith("|"):
            width = None
            continue
        cells = len(re.split(r"(?<!\\)\|", line.strip())) - 2
        width = width or cells
        assert cells == width, f"{path.name}: table row {line[:60]!r} has {cells} cells, the header {width}"


def test_the_readme_links_every_page() -> None:
    text = _text(README)
    assert "docs/index.md" in text
    index = _text(DOCS / "index.md")
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "index.md":
            assert f"({page.name})" in index, f"docs/index.md does not link {page.name}"


def test_the_readme_starts_with_the_two_make_commands() -> None:
    blocks = _fenced_blocks(_text(README))
    assert blocks, "README.md has no fenced code block"
    assert blocks[0] == ["make demo", "make test"]


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def test_every_contract_key_is_documented_in_keys_md() -> None:
    documented = _keys_named(_text(DOCS / "keys.md"))
    missing = sorted(CONTRACT - documented)
    assert not missing, f"docs/keys.md does not document {missing}"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_every_key_the_docs_name_is_logged(path: Path) -> None:
    unknown = sorted(_keys_named(_text(path)) - CONTRACT - set(DOCUMENTED_EXTRAS))
    assert not unknown, f"{path.name} names keys that are not in lightning_lplr.reporting.keys: {unknown}"


@pytest.mark.parametrize("key", sorted(DOCUMENTED_EXTRAS))
def test_every_extra_name_is_produced_by_the_code(key: str) -> None:
    """A documented name outside the contract must still appear in the package's source."""
    source = "\n".join(_text(p) for p in sorted(PACKAGE.rglob("*.py")))
    if key in HISTOGRAM_KEYS:  # built from the kind prefixes in reporting/keys.py
        assert "HISTOGRAM_KEYS" in source
    elif key in LIN_SKIPS:  # the cause is "lin_" + a reason constant of functional.linearization
        assert '"lin_' in source or "'lin_" in source or 'f"lin_' in source
    else:  # a skip counter by its cause ("skipped/" + cause), anything else by its full name
        name = key.removeprefix("skipped/")
        assert f'"{name}"' in source, f"{key} is not produced by the code"


# --------------------------------------------------------------------------------------------
# The README's argument table
# --------------------------------------------------------------------------------------------


def _argument_rows() -> dict[str, str]:
    """``argument -> default cell`` of the README's table under "Arguments of `LPLRMonitor`"."""
    text = _text(README)
    start = text.index("### Arguments of `LPLRMonitor`")
    rows: dict[str, str] = {}
    in_table = False
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            in_table = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            name = re.fullmatch(r"`(\w+)`", cells[0])
            if name:
                rows[name.group(1)] = cells[1]
        elif in_table:
            break
    return rows


def test_the_readme_argument_table_is_the_signature() -> None:
    params = {
        name: p.default
        for name, p in inspect.signature(LPLRMonitor.__init__).parameters.items()
        if name != "self"
    }
    rows = _argument_rows()
    assert sorted(set(params) - set(rows)) == [], "arguments missing from the README's table"
    assert sorted(set(rows) - set(params)) == [], "README table rows that are not arguments"
    for name, cell in rows.items():
        token = re.match(r"`([^`]+)`", cell)
        assert token, f"{name}: the default cell {cell!r} does not start with the default in backticks"
        assert ast.literal_eval(token.group(1)) == params[name], f"{name}: README default {cell!r}"


# --------------------------------------------------------------------------------------------
# Thresholds and conventions quoted
# --------------------------------------------------------------------------------------------


def test_the_lazy_regime_thresholds_are_quoted_from_regimes() -> None:
    lines = _text(DOCS / "theory.md").splitlines()
    for key, t in REGIME_THRESHOLDS.items():
        rows = [line for line in lines if line.startswith(f"| `{key}` |")]
        assert len(rows) == 1, key
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        lo, hi = f"{t.lazy_below:g}", f"{t.left_from:g}"
        assert cells[1:] == [f"< {lo}", f"{lo} – {hi}", f"≥ {hi}"], (key, cells)


def test_the_label_keys_are_documented() -> None:
    text = _text(DOCS / "conventions.md")
    for key in LABEL_KEYS:
        assert f"`{key}`" in text, key


# --------------------------------------------------------------------------------------------
# The README's early-stopping example, in real fits
# --------------------------------------------------------------------------------------------


def _readme_early_stopping() -> EarlyStopping:
    """The ``EarlyStopping(...)`` of the README's example, built from its own text."""
    text = _text(README)
    found = re.search(r'EarlyStopping\(\s*monitor="lplr/', text)
    assert found, 'the README has no EarlyStopping(monitor="lplr/...") example'
    start = found.start()
    depth = 0
    for end in range(text.index("(", start), len(text)):
        depth += {"(": 1, ")": -1}.get(text[end], 0)
        if depth == 0:
            break
    return eval(text[start : end + 1], {"EarlyStopping": EarlyStopping})


def _fit(width: int, lr: float, max_steps: int, stopper: EarlyStopping) -> tuple[pl.Trainer, LPLRMonitor]:
    """A full-batch tanh MLP on 16 samples, the NTK sampled every step so the gap is fresh at each check."""
    pl.seed_everything(0, verbose=False)
    x, y = regression_data(n=16, d=4, outputs=1)
    monitor = LPLRMonitor(ntk_every=1, probe_size=16, overhead=None)
    trainer = pl.Trainer(max_steps=max_steps, callbacks=[monitor, stopper], **trainer_kwargs())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(SmallNet(d=4, width=width, outputs=1, lr=lr), loader(x, y))
    return trainer, monitor


def test_readme_early_stopping_watches_the_linearisation_gap() -> None:
    stopper = _readme_early_stopping()
    assert stopper.monitor == "lplr/lin/gap_rel"
    assert stopper.divergence_threshold == REGIME_THRESHOLDS["lin/gap_rel"].left_from


def test_readme_early_stopping_stops_when_the_run_leaves_the_lazy_regime() -> None:
    # A width-4 net at a large step: lin/gap_rel climbs past 0.5 within a few tens of steps.
    stopper = _readme_early_stopping()
    max_steps = 200
    trainer, monitor = _fit(width=4, lr=1.0, max_steps=max_steps, stopper=stopper)
    gaps = monitor.history["lin/gap_rel"]
    above = [i for i, (_, value) in enumerate(gaps) if value > 0.5]
    assert above, f"the gap never exceeded 0.5 in {max_steps} steps: {gaps[-3:]}"
    first = above[0]
    assert first == len(gaps) - 1, "samples were taken after the gap exceeded 0.5: the run did not stop"
    assert all(value <= 0.5 for _, value in gaps[:first])
    # The gap logged at step t describes θ_t; the stop comes at the end of that step's epoch.
    assert trainer.global_step == gaps[first][0] + 1 < max_steps
    assert stopper.stopped_epoch == gaps[first][0]  # one full-batch step per epoch: stopped in that one
    message = getattr(stopper, "stopping_reason_message", None)  # Lightning >= 2.6 says why
    assert message is None or "Divergence threshold" in message


def test_readme_early_stopping_lets_a_lazy_run_finish() -> None:
    # A width-16 net at a small step stays lazy: lin/gap_rel grows but stays far below 0.5.
    stopper = _readme_early_stopping()
    max_steps = 40
    trainer, monitor = _fit(width=16, lr=0.05, max_steps=max_steps, stopper=stopper)
    gaps = monitor.history["lin/gap_rel"]
    assert len(gaps) >= max_steps - 2, "the monitored key was not logged at (almost) every step"
    assert max(value for _, value in gaps) < 0.5
    assert trainer.global_step == max_steps
    assert stopper.stopped_epoch == 0  # EarlyStopping never fired


def test_a_running_minimum_with_mode_max_stops_a_healthy_run() -> None:
    """Why the README warns: ``pl/envelope_min`` never rises, so patience ends the same lazy run."""
    stopper = EarlyStopping(monitor="lplr/pl/envelope_min", mode="max")
    max_steps = 40
    trainer, monitor = _fit(width=16, lr=0.05, max_steps=max_steps, stopper=stopper)
    envelope = [value for _, value in monitor.history["pl/envelope_min"]]
    assert all(b <= a for a, b in itertools.pairwise(envelope))  # a running minimum
    assert trainer.global_step < max_steps
    assert trainer.global_step <= stopper.patience + 1
