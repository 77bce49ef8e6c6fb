"""audiotok: audio corpora -> token shards for speech language-model pretraining, on Apache Beam.

What installs what:

* ``pip install audiotok``: the trainer side only (reading shards, the LM vocabulary and
  packing, ``inspect``/``verify``/``card``): numpy, webdataset, fsspec, safetensors. No Beam,
  no torch: a training environment keeps its own torch build.
* ``pip install 'audiotok[pipeline]'``: the jobs (``tokenize``, ``fit-kmeans``, ``decode``):
  Beam, torch and torchaudio, the decoders, cloud storage.
* ``[models]``, ``[snac]``, ``[vad]``, ``[lhotse]``, ``[hf]``, ``[gcs]``, ``[s3]``: one
  optional backend each.

Dependencies are the ranges audiotok supports; the exact set it is tested with is pinned in
``requirements.txt`` (the job and its model libraries) and ``requirements-test.txt``, which
``scripts/setup.sh``, CI and the Dataflow image install. Dataflow's ``--setup_file`` installs
only ``install_requires`` on workers, so the ``dataflow`` profile ships ``requirements.txt``
with it (``runners/profiles.py``).
"""

from setuptools import find_packages, setup

SUBPACKAGES = ("pipelines", "transforms", "runners")

# The trainer side: what `import audiotok.transforms.reader` and the dataset tools need.
INSTALL_REQUIRES = [
    "numpy>=1.26",
    "webdataset>=1.0,<2",
    "fsspec>=2025.3",
    "safetensors>=0.4",
]

GCS = ["gcsfs>=2025.3"]
S3 = ["s3fs>=2025.3"]

EXTRAS = {
    # The jobs: Beam, torch/torchaudio (any build in the range: CPU or CUDA), the decoders
    # (libsndfile, FFmpeg through PyAV, soxr), k-means fitting (faiss) and cloud storage. Not
    # Beam's [torch] extra: it pins an old torch. Lower bounds: Beam 2.66 is the first to know
    # the FnApiRunner by name (the local profiles' runner); transformers 5 needs torch 2.6. The
    # oldest pair is checked by scripts/check_oldest.sh (requirements-oldest.txt).
    "pipeline": ["apache-beam[gcp]>=2.66,<3", "torch>=2.6,<3", "torchaudio>=2.6,<3", "soundfile>=0.12.1",
                 "av>=14", "soxr>=0.5", "faiss-cpu>=1.8", *GCS, *S3],
    # Neural codecs and SSL models (EnCodec, DAC, Mimi, HuBERT, WavLM, wav2vec2).
    "models": ["transformers>=5.0"],
    "snac": ["snac>=1.2"],
    "vad": ["silero-vad>=6.0"],
    "lhotse": ["lhotse>=1.30"],
    # The dataset card's plots needed matplotlib before they were drawn as SVG; kept so that
    # 'audiotok[card]' still installs.
    "card": [],
    # Loading shards with Hugging Face datasets (its webdataset builder).
    "hf": ["datasets>=5.2"],
    # Reading datasets from buckets without the pipeline extra.
    "gcs": GCS,
    "s3": S3,
}
EXTRAS["test"] = sorted({req for name in ("pipeline", "models", "snac", "vad", "lhotse", "hf")
                         for req in EXTRAS[name]} | {
    "pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "moto[server]>=5.1", "gcp-storage-emulator>=2024.8",
    "scikit-learn>=1.4"})

setup(
    name="audiotok",
    version="0.2.0",
    description="Apache Beam pipelines that turn audio corpora into WebDataset token shards for speech LMs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # One import root: the repository's folders are installed as audiotok.pipelines, ... .
    package_dir={"audiotok": "audiotok", **{f"audiotok.{name}": name for name in SUBPACKAGES}},
    packages=["audiotok", *(f"audiotok.{name}" for name in SUBPACKAGES),
              *(f"audiotok.{name}.{sub}" for name in SUBPACKAGES for sub in find_packages(name))],
    package_data={"audiotok.runners": ["dataflow/*", "*.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["audiotok=audiotok.pipelines.cli:entry_point"]},
)
