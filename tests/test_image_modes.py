"""Every PIL mode a user's image file may have: converted by its meaning or refused by name
(bcmcore.images.read_image, used by folder prep and `bcm invert/edit --input`)."""

import numpy as np
import pytest
from PIL import Image

from bcmcore.config import UserError
from bcmcore.images import read_image
from data_prep.folders import load_image


def save(tmp_path, img, name="x.png"):
    path = tmp_path / name
    img.save(path)
    return path


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16bit_mid_grey_is_128_not_white(tmp_path, mode):
    dtype = ">u2" if mode == "I;16B" else "<u2"
    img = Image.frombytes(mode, (8, 8), np.full((8, 8), 0x8000, dtype).tobytes())
    path = save(tmp_path, img, "g.tif")
    assert np.asarray(read_image(path)).tolist() == np.full((8, 8, 3), 128).tolist()
    assert np.asarray(read_image(path, channels=1)).max() == 128
    # the folder converter too: 16-bit white stays white, black stays black
    a = np.zeros((16, 16), np.uint16)
    a[:, 8:] = 65535
    out = load_image(save(tmp_path, Image.fromarray(a), "w.png"), 16)
    assert out[:, :8].max() == 0 and out[:, 8:].min() == 255


def test_32bit_grey_and_float():
    from bcmcore.images import convert_image

    i32 = Image.fromarray(np.array([[0, 65535, 0x8000, 257]], np.int32), mode="I")
    assert np.asarray(convert_image(i32, 1)).tolist() == [[0, 255, 128, 1]]
    f = Image.fromarray(np.array([[0.0, 1.0, 0.5]], np.float32), mode="F")
    assert np.asarray(convert_image(f, 1)).tolist() == [[0, 255, 128]]
    for bad in (np.array([[0.0, 2.0]], np.float32), np.array([[np.nan, 0]], np.float32)):
        with pytest.raises(UserError, match=r"f\.tif: image mode F"):
            convert_image(Image.fromarray(bad, mode="F"), 3, where="f.tif")
    with pytest.raises(UserError, match="image mode I with values -5..70000"):
        convert_image(Image.fromarray(np.array([[-5, 70000]], np.int32), mode="I"), 3)


def test_transparency_is_composited_over_white(tmp_path):
    la = Image.fromarray(np.array([[[0, 0], [0, 255], [100, 128]]], np.uint8), mode="LA")
    assert np.asarray(read_image(save(tmp_path, la), 1)).tolist() == [[255, 0, 177]]
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    rgb = np.asarray(read_image(save(tmp_path, p, "p.png")))
    assert rgb.tolist() == [[[255, 255, 255], [200, 10, 10]]]


def test_bilevel_cmyk_and_refused_modes(tmp_path):
    one = Image.fromarray(np.array([[True, False]]))
    assert np.asarray(read_image(save(tmp_path, one, "b.png"), 1)).tolist() == [[255, 0]]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # pure red ink-free -> red
    assert np.asarray(read_image(save(tmp_path, cmyk, "c.jpg"))).tolist()[0][0][0] > 200
    lab = tmp_path / "l.tif"
    Image.new("LAB", (2, 2)).save(lab)
    with pytest.raises(UserError, match=r"l\.tif: image mode LAB is not supported"):
        read_image(lab)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"junk\.png: not a readable image"):
        read_image(junk)


def test_input_folder_of_16bit_pngs(tmp_path):
    from bcmcore.runner import load_inputs

    for k in range(2):
        save(tmp_path, Image.fromarray(np.full((4, 4), 0x8000, np.uint16)), f"{k}.png")
    x, y = load_inputs(input=str(tmp_path))
    assert x.shape == (2, 3, 4, 4) and int(x.max()) == 128 and y is None
    save(tmp_path, Image.new("L", (5, 5)), "2.png")
    with pytest.raises(UserError, match=r"2\.png: image is 5x5"):
        load_inputs(input=str(tmp_path))
