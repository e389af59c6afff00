"""LightningModules and datasets written the way other people write them, for the real-model matrix.

``tests/test_model_matrix.py`` trains each of these with the default ``LPLRMonitor(overhead=None)``. They are
small (each fit takes seconds on 2 CPU cores) but keep the structure that matters to a monitor:
dict batches and ``forward(**inputs)`` returning a ``ModelOutput``, a two-argument ``forward``,
BatchNorm with strides and downsampling, frozen and tied parameters, datasets that augment with
their own random number generators, an ``IterableDataset``, manual optimization.

Everything is built from configs on synthetic data generated here: nothing is downloaded and
no ``from_pretrained`` is called (the Hugging Face hub is switched off below). torchvision is
not imported (its wheels here are CUDA builds that break ``import lightning``); the ResNet is
a 40-line copy of its layout.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import random
from collections.abc import Iterator

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.demos import LightningTransformer, Transformer
from torch import Tensor, nn
from torch.utils.data import Dataset, IterableDataset

# ============================================================================ Hugging Face BERT
# Mirrors GLUETransformer of Lightning's text-classification tutorial, "Finetune Transformers
# Models with PyTorch Lightning": Lightning-AI/tutorials,
# lightning_examples/text-transformers/notebook.py (commit b55fd9c5, the version the docs render
# as notebooks/lightning_examples/text-transformers.html). Same forward(**inputs), same
# training_step (`outputs = self(**batch); loss = outputs[0]`), same grouped AdamW with a linear
# warm-up schedule stepped every batch. Differences, all forced by "offline and tiny": the model
# is built from a small BertConfig instead of from_pretrained; AdamW comes from torch.optim
# (transformers 5 removed its own); the GLUE metric and validation are left out (the matrix
# only trains).


class GLUETransformer(pl.LightningModule):
    """BERT sequence classifier on dict batches ``input_ids/token_type_ids/attention_mask/labels``."""

    def __init__(
        self,
        num_labels: int = 2,
        learning_rate: float = 1e-3,
        adam_epsilon: float = 1e-8,
        warmup_steps: int = 0,
        weight_decay: float = 0.0,
        vocab_size: int = 100,
    ) -> None:
        super().__init__()
        from transformers import AutoModelForSequenceClassification, BertConfig

        self.save_hyperparameters()
        self.config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=64,
            type_vocab_size=2,
            num_labels=num_labels,
        )
        self.model = AutoModelForSequenceClassification.from_config(self.config)

    def forward(self, **inputs):
        return self.model(**inputs)

    def training_step(self, batch, batch_idx):
        outputs = self(**batch)
        loss = outputs[0]
        return loss

    def configure_optimizers(self):
        """Prepare optimizer and schedule (linear warmup and decay)."""
        from transformers import get_linear_schedule_with_warmup

        model = self.model
        no_decay = ["bias", "LayerNorm.weight"]
        optimizer_grouped_parameters = [
            {
                "params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
                "weight_decay": self.hparams.weight_decay,
            },
            {
                "params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)],
                "weight_decay": 0.0,
            },
        ]
        optimizer = torch.optim.AdamW(
            optimizer_grouped_parameters, lr=self.hparams.learning_rate, eps=self.hparams.adam_epsilon
        )
        scheduler = get_linear_schedule_with_warmup(
            optimizer,
            num_warmup_steps=self.hparams.warmup_steps,
            num_training_steps=self.trainer.estimated_stepping_batches,
        )
        scheduler = {"scheduler": scheduler, "interval": "step", "frequency": 1}
        return [optimizer], [scheduler]


class SyntheticGLUE(Dataset):
    """Tokenised sentence-classification samples as the GLUE ``DataModule`` yields them (torch format).

    Each item is a dict of ``input_ids`` (``[CLS]`` = 1 first, right-padded with 0),
    ``token_type_ids``, ``attention_mask`` (1 on tokens, 0 on padding) and ``labels`` (whether
    the sentence holds more even than odd token ids: learnable from the tokens).
    """

    def __init__(self, n: int = 64, seq_len: int = 12, vocab_size: int = 100, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(3, vocab_size, (n, seq_len), generator=g)
        ids[:, 0] = 1
        lengths = torch.randint(seq_len // 2, seq_len + 1, (n,), generator=g)
        mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
        self.input_ids = ids * mask
        self.attention_mask = mask
        even = ((ids[:, 1:] % 2 == 0).long() * mask[:, 1:]).sum(1)
        self.labels = (2 * even > (lengths - 1)).long()

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {
            "input_ids": self.input_ids[index],
            "token_type_ids": torch.zeros_like(self.input_ids[index]),
            "attention_mask": self.attention_mask[index],
            "labels": self.labels[index],
        }


# ============================================================================ Hugging Face GPT-2
class CausalLM(pl.LightningModule):
    """A GPT-2 causal language model trained on dict batches ``input_ids/attention_mask/labels``.

    The usual Hugging Face + Lightning shape: ``forward(**inputs)`` returns the model's
    ``CausalLMOutputWithCrossAttentions``; the loss is ``outputs.loss`` (the model shifts the
    labels itself and ignores ``-100``).
    """

    def __init__(self, learning_rate: float = 1e-3, vocab_size: int = 128) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        self.save_hyperparameters()
        config = GPT2Config(
            n_embd=32,
            n_layer=2,
            n_head=2,
            vocab_size=vocab_size,
            n_positions=32,
            bos_token_id=vocab_size - 1,  # GPT-2's own 50256 lies outside the tiny vocabulary
            eos_token_id=vocab_size - 1,
        )
        self.model = GPT2LMHeadModel(config)  # lm_head.weight is tied to transformer.wte.weight

    def forward(self, **inputs):
        return self.model(**inputs)

    def training_step(self, batch, batch_idx):
        outputs = self(**batch)
        loss = outputs.loss
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.learning_rate)


class SyntheticLM(Dataset):
    """Right-padded token sequences from a noisy cyclic Markov chain (learnable), as a collator pads them.

    Items: ``input_ids`` (padding id 0), ``attention_mask`` (0 on padding), ``labels``
    (= ``input_ids`` with ``-100`` on padding).
    """

    def __init__(self, n: int = 64, seq_len: int = 16, vocab_size: int = 128, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        ids = torch.empty(n, seq_len, dtype=torch.long)
        ids[:, 0] = torch.randint(1, vocab_size, (n,), generator=g)
        for t in range(1, seq_len):
            jump = torch.randint(1, 3, (n,), generator=g)
            ids[:, t] = (ids[:, t - 1] - 1 + jump) % (vocab_size - 1) + 1
        lengths = torch.randint(seq_len // 2, seq_len + 1, (n,), generator=g)
        mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
        self.input_ids = ids * mask
        self.attention_mask = mask
        self.labels = self.input_ids.masked_fill(mask == 0, -100)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "labels": self.labels[index],
        }


# ============================================================================ Lightning's demo Transformer
class TinyLightningTransformer(LightningTransformer):
    """``lightning.pytorch.demos.LightningTransformer`` unchanged but for a smaller ``Transformer``.

    Its ``forward(inputs, target)``, ``training_step`` (``nll_loss`` of the log-softmax output
    flattened to ``(batch·seq, vocab)``) and ``configure_optimizers`` (SGD, lr 0.1) are the
    demo's own; ``prepare_data`` is emptied because the demo's downloads WikiText-2.
    """

    def __init__(self, vocab_size: int = 64) -> None:
        super().__init__(vocab_size=vocab_size)
        self.model = Transformer(vocab_size=vocab_size, ninp=32, nhead=2, nhid=64, nlayers=1)

    def prepare_data(self) -> None:
        pass


class SyntheticWikiText(Dataset):
    """``demos.WikiText2``'s blocks ``(inputs, target)`` (target shifted by one) over synthetic tokens."""

    def __init__(
        self, n_tokens: int = 2048, block_size: int = 16, vocab_size: int = 64, seed: int = 0
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        steps = torch.randint(1, 4, (n_tokens,), generator=g)
        self.data = torch.cumsum(steps, 0) % vocab_size
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.data) // self.block_size - 1

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        start = index * self.block_size
        end = start + self.block_size
        return self.data[start:end], self.data[start + 1 : end + 1]


# ============================================================================ ResNet-18-shaped CNN
def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: two 3×3 conv–BN, in-place ReLU, a 1×1 conv–BN downsample shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet18Like(nn.Module):
    """torchvision ``resnet18``'s layout (7×7/2 stem, max-pool, 4×2 ``BasicBlock``, avg-pool, fc), narrow."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (4, 8, 16, 32)) -> None:
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(widths[0], 2)
        self.layer2 = self._make_layer(widths[1], 2, stride=2)
        self.layer3 = self._make_layer(widths[2], 2, stride=2)
        self.layer4 = self._make_layer(widths[3], 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ImageClassifier(pl.LightningModule):
    """A CIFAR-style classifier: ``(image, label)`` batches, cross-entropy, SGD with momentum."""

    def __init__(self, net: nn.Module, lr: float = 0.05, momentum: float = 0.9) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.momentum = momentum

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


def image_data(n: int = 64, channels: int = 3, size: int = 16, classes: int = 10, seed: int = 0):
    """Images whose class shifts their mean (learnable), ``x (n, channels, size, size)``, ``y (n,)``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = (
        torch.randn(n, channels, size, size, generator=g)
        + 0.5 * (y.float() - classes / 2)[:, None, None, None]
    )
    return x, y


# ============================================================================ frozen + tied parameters
class TiedFrozenClassifier(pl.LightningModule):
    """Token classifier whose output projection is the embedding matrix (tied) and whose encoder is frozen.

    ``tokens (B, T) → mean of embeddings → frozen encoder → trainable adapter → logits (B, V)``
    with ``head.weight is embed.weight``: the "frozen pretrained body, tied input/output
    embedding" pattern of language models, reduced to a classifier (predict the first token).
    """

    def __init__(self, vocab_size: int = 16, dim: int = 16, lr: float = 0.2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.encoder = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.encoder.requires_grad_(False)
        self.adapter = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.embed.weight
        self.lr = lr

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.encoder(self.embed(tokens).mean(dim=1))
        return self.head(torch.tanh(self.adapter(h)))

    def training_step(self, batch, batch_idx):
        tokens, y = batch
        loss = F.cross_entropy(self(tokens), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def token_data(n: int = 64, seq_len: int = 6, vocab_size: int = 16, seed: int = 0):
    """Token sequences and their first token as the label."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (n, seq_len), generator=g)
    return tokens, tokens[:, 0].clone()


# ============================================================================ a plain control model
class MLPClassifier(pl.LightningModule):
    """Flatten → Linear → Tanh → Linear on ``(x, y)`` batches, cross-entropy, plain SGD (the control)."""

    def __init__(self, in_features: int = 64, hidden: int = 32, classes: int = 4, lr: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, classes)
        )
        self.lr = lr
        self.raw_losses: list[tuple[int, float]] = []
        """``(global_step when training_step ran, unscaled loss)`` of every batch: the tests' oracle."""

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        self.raw_losses.append((self.trainer.global_step, float(loss)))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class TwoOptimizerMLP(MLPClassifier):
    """Manual optimization with two optimizers (SGD on the body, Adam on the head) of one objective.

    Returns the loss from ``training_step`` (allowed under manual optimization). Each batch
    steps both optimizers, so ``trainer.global_step`` advances by 2 per batch.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        body_opt, head_opt = self.optimizers()
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        body_opt.zero_grad()
        head_opt.zero_grad()
        self.manual_backward(loss)
        body_opt.step()
        head_opt.step()
        self.log("train_loss", loss)
        self.raw_losses.append((self.trainer.global_step - 2, float(loss)))  # the step this batch began at
        return loss

    def configure_optimizers(self):
        body = torch.optim.SGD(self.net[1].parameters(), lr=self.lr)
        head = torch.optim.Adam(self.net[3].parameters(), lr=1e-2)
        return [body, head]


def small_images(n: int = 64, size: int = 8, classes: int = 4, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Grey ``1×size×size`` images with a class-dependent mean, ``x (n, 1, size, size)``, ``y (n,)``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 1, size, size, generator=g) + (y.float() - classes / 2)[:, None, None, None]
    return x, y


# ============================================================================ augmenting datasets
class PythonRandomAugment(Dataset):
    """Random horizontal flip and a random circular shift drawn from Python's global ``random``."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        img = self.x[index]
        if random.random() < 0.5:
            img = img.flip(-1)
        img = img.roll(random.randint(-1, 1), dims=-2)
        return img, self.y[index]


class NumpyRandomAugment(Dataset):
    """Random flip and Gaussian pixel noise drawn from NumPy's global ``np.random``."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        img = self.x[index]
        if np.random.rand() < 0.5:
            img = img.flip(-1)
        noise = torch.from_numpy(np.random.normal(0.0, 0.1, size=tuple(img.shape)).astype(np.float32))
        return img + noise, self.y[index]


class OwnGeneratorAugment(Dataset):
    """Random flip and pixel noise from its own ``np.random.default_rng`` (seeded in ``__init__``)."""

    def __init__(self, x: Tensor, y: Tensor, seed: int = 0) -> None:
        self.x, self.y = x, y
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        img = self.x[index]
        if self.rng.random() < 0.5:
            img = img.flip(-1)
        noise = torch.from_numpy(self.rng.normal(0.0, 0.1, size=tuple(img.shape)).astype(np.float32))
        return img + noise, self.y[index]


class CountingStream(IterableDataset):
    """An endless stream of ``(image, label)`` whose position is shared by all its iterators.

    Like a reader of a socket, a queue or a sharded file: a sample drawn by anyone is gone for
    everyone else. ``drawn`` counts the samples handed out.
    """

    def __init__(self, size: int = 8, classes: int = 4, seed: int = 0) -> None:
        self.size, self.classes = size, classes
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn = 0

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            y = torch.randint(0, self.classes, (), generator=self.generator)
            x = torch.randn(1, self.size, self.size, generator=self.generator) + (
                y.float() - self.classes / 2
            )
            self.drawn += 1
            yield x, y


# ============================================================================ GAN (manual optimization)
# Mirrors the GAN of Lightning's tutorial "PyTorch Lightning Basic GAN Tutorial":
# Lightning-AI/tutorials, lightning_examples/basic-gan/gan.py — forward(z) is the generator,
# training_step alternates a generator and a discriminator step with manual optimization and
# returns nothing; the image logging (torchvision) is left out, the networks are narrower and
# the images 1×4×4.
class Generator(nn.Module):
    def __init__(self, latent_dim: int, img_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.img_shape = img_shape
        self.model = nn.Sequential(
            nn.Linear(latent_dim, 32),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(32, int(np.prod(img_shape))),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.model(z).view(z.size(0), *self.img_shape)


class Discriminator(nn.Module):
    def __init__(self, img_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(int(np.prod(img_shape)), 32),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(32, 1),
            nn.Sigmoid(),
        )

    def forward(self, img: Tensor) -> Tensor:
        return self.model(img.view(img.size(0), -1))


class GAN(pl.LightningModule):
    def __init__(
        self, channels: int = 1, width: int = 4, height: int = 4, latent_dim: int = 8, lr: float = 2e-3
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        data_shape = (channels, width, height)
        self.generator = Generator(latent_dim=latent_dim, img_shape=data_shape)
        self.discriminator = Discriminator(img_shape=data_shape)

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)

    def adversarial_loss(self, y_hat: Tensor, y: Tensor) -> Tensor:
        return F.binary_cross_entropy(y_hat, y)

    def training_step(self, batch):
        imgs, _ = batch
        optimizer_g, optimizer_d = self.optimizers()
        z = torch.randn(imgs.shape[0], self.hparams.latent_dim).type_as(imgs)

        self.toggle_optimizer(optimizer_g)
        self.generated_imgs = self(z)
        valid = torch.ones(imgs.size(0), 1).type_as(imgs)
        g_loss = self.adversarial_loss(self.discriminator(self.generated_imgs), valid)
        self.log("g_loss", g_loss)
        self.manual_backward(g_loss)
        optimizer_g.step()
        optimizer_g.zero_grad()
        self.untoggle_optimizer(optimizer_g)

        self.toggle_optimizer(optimizer_d)
        real_loss = self.adversarial_loss(self.discriminator(imgs), valid)
        fake = torch.zeros(imgs.size(0), 1).type_as(imgs)
        fake_loss = self.adversarial_loss(self.discriminator(self.generated_imgs.detach()), fake)
        d_loss = (real_loss + fake_loss) / 2
        self.log("d_loss", d_loss)
        self.manual_backward(d_loss)
        optimizer_d.step()
        optimizer_d.zero_grad()
        self.untoggle_optimizer(optimizer_d)

    def configure_optimizers(self):
        lr = self.hparams.lr
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
        return [opt_g, opt_d], []
