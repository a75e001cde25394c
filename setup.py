"""Only what pyproject.toml cannot say: ship ``taskctl_rq.pth`` at the top of site-packages.

Python runs the import line of a ``.pth`` file there whenever it starts, so in
every environment where taskctl is installed the plain ``rq worker`` (and
``rq worker-pool``, ``rq info``) reads RQ_WORKER_CLASS and RQ_CONFIG as taskctl's,
unless they are set otherwise. Editable installs do not carry files outside the
packages; ``dev.py`` puts the same file into its ``.venv``.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "taskctl_rq.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(PTH, str(Path(self.build_lib) / PTH))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


setup(cmdclass={"build_py": BuildPyWithPth})
