"""Package discovery for setuptools: every `engine*` and `providers*` package, plus the data folders mapped in."""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["engine", "engine.*", "providers", "providers.*"]),
        # grammar/ and policies/ stay top-level folders; pyproject's package-dir maps them into the engine package.
        "engine._grammar",
        "engine._policies",
    ]
)
