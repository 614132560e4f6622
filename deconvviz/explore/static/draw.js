// deconvviz explore: what the page draws and writes that needs none of its state. Loaded before explore.js,
// which takes these from window.deconvvizDraw.
"use strict";

window.deconvvizDraw = (function () {
  function number(value) {
    // Activations: whole numbers from 100 up (1,087,576 with separators), three significant digits below.
    const size = Math.abs(value);
    if (size >= 100) return Math.round(value).toLocaleString("en-US");
    if (size >= 1) return value.toPrecision(3);
    return size === 0 ? "0" : value.toPrecision(2);
  }

  function mebibytes(count) {
    // As the server says sizes: 32 MiB, 33.6 MiB, 0.191 MiB.
    const value = count / 1048576;
    return (value >= 1 ? value.toFixed(1).replace(/\.0$/, "") : String(Number(value.toPrecision(3)))) + " MiB";
  }

  function thumbnail(src, alt) {
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = alt;
    img.src = src;
    return img;
  }

  function describeLayer(layer) {
    const field = layer.receptive_field;
    const rf = !field ? "field ?" : field.whole_image ? "whole image" : "field " + field.size.join("x") + " /" + field.stride[0];
    return layer.shape.join("x") + " · " + rf;
  }

  function drawBox(el, box, size) {
    // box: top, left, bottom, right of a size[0] x size[1] picture, drawn over it in percent of its frame.
    if (!box) { el.hidden = true; return; }
    el.hidden = false;
    el.style.top = (100 * box[0] / size[0]) + "%";
    el.style.left = (100 * box[1] / size[1]) + "%";
    el.style.height = (100 * (box[2] - box[0]) / size[0]) + "%";
    el.style.width = (100 * (box[3] - box[1]) / size[1]) + "%";
  }

  function crop(el, url, box, size, side) {
    // Show url's region box (top, left, bottom, right of a size[0] x size[1] picture) in a side x side square.
    const [top, left, bottom, right] = box || [0, 0, size[0], size[1]];
    const scale = side / Math.max(bottom - top, right - left, 1);
    el.style.backgroundImage = "url(\"" + url + "\")";
    el.style.backgroundSize = (size[1] * scale) + "px " + (size[0] * scale) + "px";
    el.style.backgroundPosition = (-left * scale) + "px " + (-top * scale) + "px";
    el.style.width = ((right - left) * scale) + "px";
    el.style.height = ((bottom - top) * scale) + "px";
  }

  function oneColour(img) {
    // Whether a loaded picture is all one colour (a reconstruction of one grey is all zero).
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(img, 0, 0);
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let flat = data.length > 0;
    for (let i = 4; flat && i < data.length; i += 4) {
      flat = data[i] === data[0] && data[i + 1] === data[1] && data[i + 2] === data[2];
    }
    return flat;
  }

  return { number, mebibytes, thumbnail, describeLayer, drawBox, crop, oneColour };
})();
