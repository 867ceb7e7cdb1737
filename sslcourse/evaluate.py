"""How every notebook measures a representation: frozen features, then

* a weighted k-nearest-neighbour classifier (k=200, T=0.1, cosine similarity), as in
  the MoCo CIFAR-10 demo and Wu et al. (2018), "Unsupervised feature learning via
  non-parametric instance discrimination";
* a linear probe: multinomial logistic regression on standardised features;
* a label-efficiency curve: the linear probe trained on 1%, 10%, 100% of the labels.

The encoder is never trained here. Features stay on the device they were computed on.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .allocator import keep_freed_memory
from .train.loop import _autocast
from .data.batches import normalize, to_float
from .distributed import SINGLE, Replicas, gather_interleaved, shard_indices

__all__ = ["extract_features", "knn_predict", "knn_accuracy", "linear_probe", "label_efficiency",
           "evaluate_encoder"]


@torch.no_grad()
def extract_features(encoder: nn.Module, images_uint8: torch.Tensor, *, mean, std, device: torch.device | str,
                     batch_size: int = 512, block: int | None = None,
                     features: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                     amp: bool = True, replicas: Replicas = SINGLE) -> torch.Tensor:
    """Encode uint8 images ``[N, 3, H, W]`` into float32 features ``[N, D]`` on ``device``.

    The encoder runs in eval mode (batch norm uses its running statistics) without
    gradients, on ``device`` (it is moved there); its train/eval mode is restored after.
    ``block=k`` returns ``encoder.block_features(x, k)`` (1-based) instead of ``encoder(x)``;
    ``features=f`` returns ``f(encoder, x)`` (e.g. a student's own pooling of one block).
    Images are normalised with ``mean`` and ``std`` (the dataset's, in [0, 1] units).
    ``amp=True`` runs the encoder under bf16 autocast where ``fit`` would (CUDA, and a CPU
    where :func:`sslcourse.cpu_bf16.use_bf16`); the features come back as float32 either way.
    With ``replicas`` of several processes (under ``torchrun``), each process encodes every
    ``world``-th image and the features are gathered, so every process gets all ``[N, D]``.
    """
    if not isinstance(images_uint8, torch.Tensor) or images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
        got = (f"{images_uint8.dtype} {tuple(images_uint8.shape)}" if isinstance(images_uint8, torch.Tensor)
               else type(images_uint8).__name__)
        raise TypeError(f"extract_features expects uint8 images [N, C, H, W], got {got}.")
    if block is not None and features is not None:
        raise TypeError("extract_features: pass block= or features=, not both.")
    if block is not None and not hasattr(encoder, "block_features"):
        raise TypeError(f"block={block} needs an encoder with block_features(x, block) "
                        f"(ConvNet, ResNet18); {type(encoder).__name__} has none.")
    if replicas.active:
        rows = shard_indices(len(images_uint8), replicas)
        mine = extract_features(encoder, images_uint8[rows], mean=mean, std=std, device=device,
                                batch_size=batch_size, block=block, features=features, amp=amp)
        return gather_interleaved(mine, replicas)[:len(images_uint8)]
    device = torch.device(device)
    was_training = encoder.training
    encoder.to(device).eval()
    try:
        chunks = []
        autocast = _autocast(device, amp)
        with keep_freed_memory(device.type == "cpu"), autocast:  # each batch re-allocates the same large maps
            for start in range(0, len(images_uint8), batch_size):
                x = normalize(to_float(images_uint8[start:start + batch_size].to(device, non_blocking=True)),
                              mean, std)
                if features is not None:
                    f = features(encoder, x)
                else:
                    f = encoder(x) if block is None else encoder.block_features(x, block)
                if f.ndim != 2:
                    raise ValueError(f"The encoder returned features of shape {tuple(f.shape)}; expected [B, D]. "
                                     "Pool or flatten them in the encoder's forward.")
                chunks.append(f.float())
        if not chunks:
            raise ValueError("extract_features got no images.")
        return torch.cat(chunks)
    finally:
        encoder.train(was_training)


def _check_features(name: str, features: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"{name}: expected features [N, D], got {got}.")
    if labels is not None and (labels.ndim != 1 or len(labels) != len(features)):
        raise ValueError(f"{name}: expected labels [{len(features)}] for {len(features)} feature rows, "
                         f"got shape {tuple(labels.shape)}.")


@torch.no_grad()
def knn_predict(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, *, k: int = 200,
                temperature: float = 0.1, num_classes: int | None = None, chunk_size: int | None = None,
                return_scores: bool = False):
    """Weighted kNN: predict a label for each row of ``test_f`` ``[M, D]`` from ``train_f`` ``[N, D]``.

    Each test feature votes with its ``k`` most cosine-similar training features,
    neighbour ``i`` adding ``exp(s_i / temperature)`` to the score of its class
    (the MoCo CIFAR-10 demo's monitor, after Wu et al., 2018). Runs on the features'
    device, ``chunk_size`` test rows at a time (default: about 16M similarities per chunk).

    ``k`` larger than the training set is clamped to ``N`` (every training feature votes).

    Returns:
        predicted labels ``[M]`` (int64); with ``return_scores``, also the class scores ``[M, C]``.
    """
    _check_features("knn_predict train_f", train_f, train_y)
    _check_features("knn_predict test_f", test_f)
    if train_f.shape[1] != test_f.shape[1]:
        raise ValueError(f"knn_predict: train features have {train_f.shape[1]} dimensions, "
                         f"test features {test_f.shape[1]}.")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    device = train_f.device
    k = min(k, len(train_f))
    num_classes = int(train_y.max()) + 1 if num_classes is None else num_classes
    bank = F.normalize(train_f.float(), dim=1)                       # [N, D]
    labels = train_y.to(device).long()                                 # [N]
    chunk_size = chunk_size or max(1, 2**24 // len(bank))
    predictions, all_scores = [], []
    for start in range(0, len(test_f), chunk_size):
        query = F.normalize(test_f[start:start + chunk_size].to(device).float(), dim=1)  # [B, D]
        similarity = query @ bank.T                                     # [B, N]
        top_sim, top_idx = similarity.topk(k, dim=1)                    # [B, k]
        weights = (top_sim / temperature).exp()                         # [B, k]
        one_hot = F.one_hot(labels[top_idx], num_classes).float()       # [B, k, C]
        scores = (one_hot * weights.unsqueeze(-1)).sum(dim=1)           # [B, C]
        predictions.append(scores.argmax(dim=1))
        if return_scores:
            all_scores.append(scores)
    predicted = torch.cat(predictions)
    return (predicted, torch.cat(all_scores)) if return_scores else predicted


def knn_accuracy(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor, *,
                 k: int = 200, temperature: float = 0.1, num_classes: int | None = None) -> float:
    """Top-1 accuracy (percent) of :func:`knn_predict` on ``test_f``, ``test_y``."""
    _check_features("knn_accuracy test_f", test_f, test_y)
    predicted = knn_predict(train_f, train_y, test_f, k=k, temperature=temperature, num_classes=num_classes)
    return 100.0 * (predicted.cpu() == test_y.cpu()).float().mean().item()


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor, *,
                 iterations: int = 100, lr: float = 1.0, weight_decay: float = 1e-3,
                 num_classes: int | None = None) -> float:
    """Accuracy (percent) of a linear classifier trained on frozen features.

    The features are standardised with the training set's per-dimension mean and std,
    then a multinomial logistic regression ``softmax(W f + b)`` is fitted to the whole
    training set at once with L-BFGS (strong-Wolfe line search), for at most ``iterations``
    L-BFGS iterations, each a full pass over the features. The objective is
    ``cross_entropy + weight_decay / 2 · ||W||²``. Full-batch L-BFGS needs no batch
    order or learning-rate schedule, so the result is deterministic, and 10k×256
    features take well under a second on a CPU. Runs on the features' device.
    """
    _check_features("linear_probe train_f", train_f, train_y)
    _check_features("linear_probe test_f", test_f, test_y)
    device = train_f.device
    x, y = train_f.float(), train_y.to(device).long()
    mu = x.mean(0, keepdim=True)
    sigma = x.std(0, keepdim=True).clamp_min(1e-6) if len(x) > 1 else torch.ones_like(mu)
    x = (x - mu) / sigma
    x_test = (test_f.to(device).float() - mu) / sigma
    num_classes = max(int(y.max()), int(test_y.max())) + 1 if num_classes is None else num_classes
    classifier = nn.Linear(x.shape[1], num_classes).to(device)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.LBFGS(classifier.parameters(), lr=lr, max_iter=iterations, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(classifier(x), y) + weight_decay / 2 * classifier.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        predicted = classifier(x_test).argmax(dim=1)
    return 100.0 * (predicted.cpu() == test_y.cpu()).float().mean().item()


def stratified_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Indices of a class-balanced random ``fraction`` of ``labels`` (at least one per class)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    labels = labels.cpu()
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique():
        members = (labels == c).nonzero().squeeze(1)
        n = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return torch.cat(chosen).sort().values


def label_efficiency(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                     fractions: Sequence[float] = (0.01, 0.1, 1.0), seed: int = 0, **probe_kwargs) -> dict:
    """Linear-probe accuracy (percent) with a class-balanced ``fraction`` of the training labels.

    Returns ``{fraction: accuracy}``. The subsets come from ``seed``, so every method is
    probed on the same images. ``probe_kwargs`` go to :func:`linear_probe`.
    """
    _check_features("label_efficiency train_f", train_f, train_y)
    _check_features("label_efficiency test_f", test_f, test_y)
    num_classes = max(int(train_y.max()), int(test_y.max())) + 1
    curve = {}
    for fraction in fractions:
        idx = stratified_subset(train_y, fraction, seed).to(train_f.device)
        curve[float(fraction)] = linear_probe(train_f[idx], train_y.to(train_f.device)[idx], test_f, test_y,
                                              num_classes=num_classes, **probe_kwargs)
    return curve


def evaluate_encoder(encoder: nn.Module, data, device: torch.device | str, block: int | None = None, *,
                     features: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                     k: int = 200, temperature: float = 0.1, linear: bool = True, linear_iterations: int = 100,
                     batch_size: int = 512, replicas: Replicas = SINGLE) -> dict:
    """kNN and linear-probe accuracy (percent) of a frozen encoder on an :class:`~sslcourse.data.ImageDataset`.

    Returns ``{"knn": .., "linear": ..}`` (only ``"knn"`` with ``linear=False``: the cheap
    per-epoch monitor). ``block`` picks a block's pooled features (1-based); ``features``
    is any ``f(encoder, x) -> [B, D]`` instead (see :func:`extract_features`). The kNN is
    weighted (k = 200, T = 0.1 by default, as in the MoCo CIFAR-10 demo); the linear probe
    runs ``linear_iterations`` L-BFGS iterations (:func:`linear_probe`).
    """
    extracted = {split: extract_features(encoder, getattr(data, f"{split}_x"), mean=data.mean, std=data.std,
                                         device=device, batch_size=batch_size, block=block, features=features,
                                         replicas=replicas)
                 for split in ("train", "test")}
    train_y, test_y = data.train_y.to(extracted["train"].device), data.test_y.to(extracted["train"].device)
    num_classes = getattr(data, "num_classes", None)
    result = {"knn": knn_accuracy(extracted["train"], train_y, extracted["test"], test_y, k=k,
                                  temperature=temperature, num_classes=num_classes)}
    if linear:
        result["linear"] = linear_probe(extracted["train"], train_y, extracted["test"], test_y,
                                        num_classes=num_classes, iterations=linear_iterations)
    return result
