# The model component's Startup check (standard library only; the recipe runs it as ``python3 -c``, so it
# holds no braces, which a nucleus reads as recipe variables, and no single quotes): the archive holds only
# regular files and folders, model.onnx is a whole ONNX ModelProto (protobuf wire format with ir_version and a
# graph) and labels.txt names at least one label. A model that fails it fails the deployment (ROLLBACK).
import sys
import tarfile

archive = tarfile.open(sys.argv[1], "r:gz")
members = archive.getmembers()
if not all(m.isfile() or m.isdir() for m in members):
    raise SystemExit("the model archive holds links or devices")
files = dict((m.name.split("/")[-1], m) for m in members if m.isfile())
if "model.onnx" not in files or "labels.txt" not in files:
    raise SystemExit("the model archive has no model.onnx and labels.txt")


def read(name):
    source = archive.extractfile(files[name])
    if source is None:
        raise SystemExit(name + " is not a file")
    return source.read()


labels = [x for x in read("labels.txt").decode().splitlines() if x.strip()]
if not labels:
    raise SystemExit("labels.txt names no label")
data = read("model.onnx")


def varint(at):
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 127) << shift
        shift += 7
        if byte < 128:
            return value, at


at, fields = 0, set()
try:
    while at < len(data):
        key, at = varint(at)
        fields.add(key >> 3)
        wire = key & 7
        if wire == 0:
            at = varint(at)[1]
        elif wire == 1 or wire == 5:
            at += 8 if wire == 1 else 4
        elif wire == 2:
            size, at = varint(at)
            at += size
        else:
            raise IndexError(wire)
except IndexError:
    at = -1
if at != len(data) or 1 not in fields or 7 not in fields:
    raise SystemExit("model.onnx is not an ONNX model")
print("model checked:", len(labels), "labels,", len(data), "bytes")
