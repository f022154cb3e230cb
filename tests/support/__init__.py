"""Helpers shared by the tests (importable as ``support.*``: pyproject's pytest ``pythonpath`` names tests/).

- ``support.data``: where the open datasets are, failing clearly when they are missing;
- ``support.cli``: the installed ``eagrl`` entry point, run as a user would;
- ``support.llm``, ``support.expert``: small cohorts and hand-made patients;
- ``support.kfp_standin``, ``support.services``: a local KFP REST stand-in, PostgreSQL and ``mlflow server``;
- ``support/images_kfp_docker.py``: a script the image tests run in a process of its own.
"""
