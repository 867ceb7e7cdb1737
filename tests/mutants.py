"""Plausible student mistakes, one per mutant, for the mutation check (tests/test_mutants.py).

Each mutant names the exercise (the solution cell's grade_id), the edits that turn the solution
into the mistake (``(old, new)`` pairs, exact substrings of the solution cell), and what a
student would have done. Every mutant must fail at least one of that exercise's test cells.
Add a mutant when a student's mistake slips through, then make a test catch it.
"""
from __future__ import annotations

from typing import NamedTuple


class Mutant(NamedTuple):
    exercise: str
    edits: tuple[tuple[str, str], ...]
    mistake: str


def m(exercise: str, mistake: str, *edits: tuple[str, str]) -> Mutant:
    return Mutant(exercise, edits, mistake)


MUTANTS = {
    "00_foundations": [
        m("cosine_similarity_matrix", "forgets to normalise b",
          ("b_unit = b / b.norm(dim=1, keepdim=True).clamp_min(eps)", "b_unit = b")),
        m("cosine_similarity_matrix", "normalises along the wrong axis",
          ("a / a.norm(dim=1, keepdim=True)", "a / a.norm(dim=0, keepdim=True)"),
          ("b / b.norm(dim=1, keepdim=True)", "b / b.norm(dim=0, keepdim=True)")),
        m("cosine_similarity_matrix", "no eps: a zero row gives NaN",
          ("a / a.norm(dim=1, keepdim=True).clamp_min(eps)", "a / a.norm(dim=1, keepdim=True)"),
          ("b / b.norm(dim=1, keepdim=True).clamp_min(eps)", "b / b.norm(dim=1, keepdim=True)")),
        m("cosine_similarity_matrix", "divides by the squared norm",
          ("a / a.norm(dim=1, keepdim=True).clamp_min(eps)", "a / (a * a).sum(dim=1, keepdim=True).clamp_min(eps)"),
          ("b / b.norm(dim=1, keepdim=True).clamp_min(eps)", "b / (b * b).sum(dim=1, keepdim=True).clamp_min(eps)")),
        m("weighted_knn_predict", "plain majority vote, no weights",
          ("weights = ((top_similarity - top_similarity[:, :1]) / temperature).exp()",
           "weights = torch.ones_like(top_similarity)")),
        m("weighted_knn_predict", "multiplies by the temperature",
          ("/ temperature).exp()", "* temperature).exp()")),
        m("weighted_knn_predict", "k larger than N crashes topk",
          ("k = min(k, len(train_features))", "k = k")),
        m("weighted_knn_predict", "the k least similar neighbours",
          ("similarity.topk(k, dim=1)", "similarity.topk(k, dim=1, largest=False)")),
        m("weighted_knn_predict", "num_classes off by one",
          ("num_classes = int(train_labels.max()) + 1", "num_classes = int(train_labels.max())")),
        m("accuracy", "a fraction, not a percentage",
          ("return 100.0 * (predictions == labels)", "return (predictions == labels)")),
        m("accuracy", "arg-max over the wrong axis", ("predictions.argmax(dim=1)", "predictions.argmax(dim=0)")),
        m("accuracy", "returns a tensor", (".float().mean().item()", ".float().mean()")),
        m("train_linear_probe", "random initial weights", ("nn.init.zeros_(probe.weight)", "pass")),
        m("train_linear_probe", "never clears the gradients", ("optimizer.zero_grad(set_to_none=True)", "pass")),
        m("train_linear_probe", "one step too many", ("for _ in range(epochs):", "for _ in range(epochs + 1):")),
        m("train_linear_probe", "SGD instead of Adam", ("torch.optim.Adam(", "torch.optim.SGD(")),
    ],
    "05_rotation": [
        m("rotate_batch", "rotates clockwise",
          ("torch.rot90(x, int(angle) // 90, dims=(-2, -1))", "torch.rot90(x, -(int(angle) // 90), dims=(-2, -1))")),
        m("rotate_batch", "labels interleaved instead of in blocks",
          (".repeat_interleave(x.shape[0])", ".repeat(x.shape[0])")),
        m("rotate_batch", "accepts a non-square or 3-D input",
          ("if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[-2] != x.shape[-1]:", "if False:")),
        m("rotate_batch", "rounds every angle to a quarter turn", ("if angle % 90 == 0:", "if True:")),
        m("rotate_batch", "labels are the angles, not their indices",
          ("labels = torch.arange(len(angles), device=x.device)",
           "labels = torch.tensor([int(a) for a in angles], device=x.device)")),
        m("rotnet_loss", "sums instead of averaging",
          ("F.cross_entropy(logits, labels)", "F.cross_entropy(logits, labels, reduction='sum')")),
        m("rotnet_loss", "accuracy as a percentage",
          ("accuracy = (logits.argmax(dim=1) == labels).float().mean()",
           "accuracy = 100 * (logits.argmax(dim=1) == labels).float().mean()")),
        m("rotnet_loss", "ignores the rotate argument", ("rotated, labels = rotate(x, angles)",
                                                          "rotated, labels = rotate_batch(x, angles)")),
        m("rotnet_loss", "only the unrotated images", ("logits = model(rotated)", "logits = model(rotated[:len(x)]).repeat(len(angles), 1)")),
        m("block_features", "0-based block index", ("maps[block - 1]", "maps[block]")),
        m("block_features", "stays in training mode", ("    encoder.eval()\n", "    pass\n")),
        m("block_features", "does not restore the mode", ("encoder.train(was_training)", "encoder.eval()")),
        m("block_features", "max pooling instead of the mean", (".mean(dim=(2, 3))", ".amax(dim=(2, 3))")),
        m("block_features", "no range check of block",
          ("if not isinstance(block, int) or not 1 <= block <= len(maps):", "if False:")),
    ],
    "07_moco": [
        m("info_nce_in_batch", "forgets to L2-normalise",
          ("z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)", "z = torch.cat([z1, z2], dim=0)")),
        m("info_nce_in_batch", "keeps each anchor among its own candidates",
          ("logits = logits.masked_fill(is_self, float(\"-inf\"))", "logits = logits")),
        m("info_nce_in_batch", "zeroes the diagonal instead of masking it",
          ("logits = logits.masked_fill(is_self, float(\"-inf\"))", "logits = logits * (~is_self)")),
        m("info_nce_in_batch", "the partner of the second view is wrong",
          ("partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])",
           "partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n, 2 * n)])")),
        m("info_nce_in_batch", "multiplies by the temperature", ("logits = z @ z.T / temperature", "logits = z @ z.T * temperature")),
        m("moco_infonce", "does not detach the keys and the queue", ("k, queue = k.detach(), queue.detach()", "pass")),
        m("moco_infonce", "positive in the wrong column",
          ("labels = torch.zeros(len(q), dtype=torch.long, device=q.device)",
           "labels = torch.ones(len(q), dtype=torch.long, device=q.device)")),
        m("moco_infonce", "forgets the temperature", ("logits = torch.cat([l_pos, l_neg], dim=1) / temperature",
                                                      "logits = torch.cat([l_pos, l_neg], dim=1)")),
        m("moco_infonce", "sums the loss", ("F.cross_entropy(logits, labels)", "F.cross_entropy(logits, labels, reduction='sum')")),
        m("momentum_update", "m and 1 - m swapped",
          ("p_k.mul_(m).add_(p_q.detach(), alpha=1.0 - m)", "p_k.mul_(1.0 - m).add_(p_q.detach(), alpha=m)")),
        m("momentum_update", "rebinds .data instead of updating in place",
          ("p_k.mul_(m).add_(p_q.detach(), alpha=1.0 - m)", "p_k.data = m * p_k.data + (1.0 - m) * p_q.data")),
        m("momentum_update", "no torch.no_grad(), no detach",
          ("with torch.no_grad():\n        for", "if True:\n        for"), ("p_q.detach()", "p_q")),
        m("momentum_update", "no range check of m", ("if not 0.0 <= m <= 1.0:", "if False:")),
        m("momentum_update", "averages the buffers too",
          ("            p_k.mul_(m).add_(p_q.detach(), alpha=1.0 - m)\n",
           "            p_k.mul_(m).add_(p_q.detach(), alpha=1.0 - m)\n"
           "        for b_k, b_q in zip(key_encoder.buffers(), query_encoder.buffers()):\n"
           "            b_k.copy_(b_q)\n")),
        m("enqueue_dequeue", "no wrap-around",
          ("rows = (pointer + torch.arange(n, device=queue.device)) % size",
           "rows = (pointer + torch.arange(n, device=queue.device)).clamp_max(size - 1)")),
        m("enqueue_dequeue", "the pointer is not taken modulo K", ("return int((pointer + n) % size)", "return int(pointer + n)")),
        m("enqueue_dequeue", "returns the pointer as a tensor",
          ("return int((pointer + n) % size)", "return torch.tensor((pointer + n) % size)")),
        m("enqueue_dequeue", "no check of too many keys", ("if n > size:", "if False:")),
        m("enqueue_dequeue", "keeps the keys' autograd history",
          ("    with torch.no_grad():\n        queue[rows] = keys.detach().to(queue.dtype)",
           "    queue[rows] = keys.to(queue.dtype)")),
        m("moco_step", "passes the queue without a snapshot", ("moco.queue.clone()", "moco.queue")),
        m("moco_step", "encodes the keys before the momentum update",
          ("        update(moco.key_encoder, moco.query_encoder, moco.momentum)\n        k = moco.encode_keys(x_k)",
           "        k = moco.encode_keys(x_k)\n        update(moco.key_encoder, moco.query_encoder, moco.momentum)")),
        m("moco_step", "pretext accuracy as a fraction",
          ("accuracy = 100.0 * (logits.argmax(dim=1) == 0).float().mean()",
           "accuracy = (logits.argmax(dim=1) == 0).float().mean()")),
        m("moco_step", "enqueues before the loss sees the queue",
          ("    loss, logits = infonce(q, k, moco.queue.clone(), moco.temperature)  # negatives: the queue before this batch\n"
           "    moco.pointer = enqueue(moco.queue, moco.pointer, k)\n",
           "    moco.pointer = enqueue(moco.queue, moco.pointer, k)\n"
           "    loss, logits = infonce(q, k, moco.queue.clone(), moco.temperature)\n")),
        m("moco_step", "forgets to store the new pointer",
          ("moco.pointer = enqueue(moco.queue, moco.pointer, k)", "enqueue(moco.queue, moco.pointer, k)")),
        m("moco_step", "calls its own exercise functions instead of the arguments",
          ("update(moco.key_encoder, moco.query_encoder, moco.momentum)",
           "momentum_update(moco.key_encoder, moco.query_encoder, moco.momentum)")),
    ],
}
