"""audiotok: audio corpora -> token shards for speech language-model pretraining, on Apache Beam.

This file is also what Dataflow's ``--setup_file`` installs on workers, so
``install_requires`` holds everything a worker needs to run the tokenize job.
"""

from setuptools import find_packages, setup

SUBPACKAGES = ("pipelines", "transforms", "runners")

INSTALL_REQUIRES = [
    "torch==2.11.0",
    "torchaudio==2.11.0",
    "apache-beam[gcp]==2.77.0",
    "webdataset==1.0.2",
    "fsspec>=2025.3",
    "gcsfs>=2025.3",
    "s3fs>=2025.3",
    "numpy>=1.26",
    "soundfile>=0.12.1",
    "av>=14",
    "soxr>=0.5",
    "safetensors>=0.4",
    "tqdm>=4.66",
]

EXTRAS = {
    # Neural codecs and SSL models (EnCodec, DAC, Mimi, HuBERT, WavLM, wav2vec2).
    "models": ["transformers>=5.0"],
    "snac": ["snac>=1.2"],
    "vad": ["silero-vad>=6.0"],
    "lhotse": ["lhotse>=1.30"],
    "card": ["matplotlib>=3.8"],
    # Loading shards with Hugging Face datasets (its webdataset builder).
    "hf": ["datasets>=5.2"],
    "test": [
        "pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "transformers>=5.0", "silero-vad>=6.0",
        "moto[server]>=5.1", "gcp-storage-emulator>=2024.8", "lhotse>=1.30", "matplotlib>=3.8",
        "snac>=1.2", "datasets>=5.2",
    ],
}

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
    entry_points={"console_scripts": ["audiotok=audiotok.pipelines.cli:main"]},
)
