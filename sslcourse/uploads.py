"""Images a student uploads through an ``ipywidgets.FileUpload``, on ipywidgets 7 and 8.

The widget's ``value`` changed shape between the two: ipywidgets 7 gives a dict
``{filename: {"metadata": {...}, "content": bytes}}``, ipywidgets 8 a tuple of dicts
``{"name": ..., "content": memoryview, ...}``. :func:`latest_image` reads either.
"""
from __future__ import annotations

import io

import torch

__all__ = ["uploaded_files", "latest_image", "image_to_tensor"]


def uploaded_files(value) -> list[tuple[str, bytes]]:
    """``[(name, content)]`` from a FileUpload's ``value`` (ipywidgets 7's dict or 8's tuple), in upload order."""
    if not value:
        return []
    if isinstance(value, dict):                                   # ipywidgets 7
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item.get("name", "upload"), bytes(item["content"])) for item in value]   # ipywidgets 8


def image_to_tensor(content: bytes, size: int, name: str = "the upload") -> torch.Tensor:
    """Decode an image file, crop its centre to a square and resize it: uint8 ``[3, size, size]``.

    Raises:
        ValueError: the bytes are not an image Pillow can read; the message names the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(content)).convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{name} is not an image Pillow can read (expected a JPEG, PNG, ...): {error}") from error
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1).contiguous()


def latest_image(upload, size: int) -> tuple[str | None, torch.Tensor | None]:
    """``(name, uint8 [3, size, size])`` of the last file in a FileUpload widget, or ``(None, None)`` if empty."""
    files = uploaded_files(upload.value)
    if not files:
        return None, None
    name, content = files[-1]
    return name, image_to_tensor(content, size, name)
