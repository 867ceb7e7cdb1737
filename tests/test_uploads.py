"""sslcourse.uploads: a FileUpload's value on ipywidgets 7 (dict) and 8 (tuple), decoded to a tensor."""
import datetime
import io

import ipywidgets
import pytest
import torch
from PIL import Image

from sslcourse import uploads


def png(width, height, colour):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_both_widget_formats_give_the_same_files():
    content = png(40, 20, (200, 10, 30))
    v7 = {"cat.png": {"metadata": {"name": "cat.png", "type": "image/png"}, "content": content}}
    v8 = ({"name": "cat.png", "type": "image/png", "size": len(content), "content": memoryview(content)},)
    assert uploads.uploaded_files(v7) == uploads.uploaded_files(v8) == [("cat.png", content)]
    assert uploads.uploaded_files({}) == uploads.uploaded_files(()) == []


def test_an_image_is_cropped_to_its_centre_and_resized():
    image = Image.new("RGB", (60, 30), (0, 0, 255))
    image.paste((255, 0, 0), (15, 0, 45, 30))                 # the centre square is red, the sides blue
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    tensor = uploads.image_to_tensor(buffer.getvalue(), 8)
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 8, 8)
    assert (tensor[0] > 200).all() and (tensor[2] < 50).all()


def test_the_installed_widget_round_trips_and_bad_files_are_named():
    widget = ipywidgets.FileUpload()
    assert uploads.latest_image(widget, 8) == (None, None)
    major = int(ipywidgets.__version__.split(".")[0])
    content = png(10, 10, (0, 255, 0))
    widget.value = ({"name": "g.png", "type": "image/png", "size": len(content), "content": memoryview(content),
                     "last_modified": datetime.datetime.now()},) if major >= 8 else {"g.png": {"metadata": {}, "content": content}}
    name, tensor = uploads.latest_image(widget, 4)
    assert name == "g.png" and tensor.shape == (3, 4, 4) and (tensor[1] == 255).all()
    with pytest.raises(ValueError, match="notes.txt is not an image"):
        uploads.image_to_tensor(b"hello", 4, "notes.txt")
