"""Map every `flame.*` package to the root it lives in: src/ or gen/.

setuptools cannot merge one namespace package from two `where` roots on its own;
everything else about the distribution is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

packages: list[str] = []
package_dir: dict[str, str] = {}
for root in ("src", "gen"):
    for package in find_namespace_packages(root, include=["flame.*"]):
        packages.append(package)
        package_dir[package] = f"{root}/{package.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir)
