"""A TFDS dataset prepared as TFRecord, rewritten as ArrayRecord (which the streaming pipeline reads).

    python -m experiments.trainer.input.convert --source DATA_DIR/NAME/VERSION --out OUT_DATA_DIR

The streaming pipeline needs random access (grain samples records by index), which TFDS offers only for
``array_record`` files; a dataset prepared as ``tfrecord`` (TFDS's default, e.g. an ImageNet prepared earlier)
is converted once: the same serialized examples, in the same shards and order, and ``dataset_info.json`` with
``"fileFormat": "array_record"``; the result is ``OUT_DATA_DIR/NAME/VERSION``. Reading TFRecords needs
TensorFlow (preparation only; training then reads with array_record and NumPy). TFDS's own ``tfds
convert_format`` does the same but needs Apache Beam installed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil

TEMPLATE_WORD = ".tfrecord-"


def convert(source: str | pathlib.Path, out_data_dir: str | pathlib.Path) -> pathlib.Path:
    """Writes ``source`` (a ``NAME/VERSION`` folder of TFRecord shards) as ArrayRecord under ``out_data_dir``.

    Returns:
      The new ``NAME/VERSION`` folder.
    """
    import tensorflow as tf  # preparation only
    from array_record.python.array_record_module import ArrayRecordWriter

    source = pathlib.Path(source)
    info = json.loads((source / "dataset_info.json").read_text())
    if info.get("fileFormat", "tfrecord") != "tfrecord":
        raise ValueError(f"{source} holds {info['fileFormat']} files, not tfrecord")
    target = pathlib.Path(out_data_dir) / source.parent.name / source.name
    partial = target.with_name(target.name + ".incomplete")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if TEMPLATE_WORD in path.name:
            writer = ArrayRecordWriter(
                str(partial / path.name.replace(TEMPLATE_WORD, ".array_record-")), "group_size:1"
            )
            for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
                writer.write(record)
            writer.close()
        elif path.name == "dataset_info.json":
            (partial / path.name).write_text(json.dumps({**info, "fileFormat": "array_record"}))
        elif path.is_file():
            shutil.copyfile(path, partial / path.name)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # whole or absent
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="DATA_DIR/NAME/VERSION of TFRecord shards")
    parser.add_argument("--out", required=True, help="the TFDS data dir to write NAME/VERSION into")
    args = parser.parse_args()
    print(convert(args.source, args.out))


if __name__ == "__main__":
    main()
