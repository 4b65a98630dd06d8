"""Map every `flame.*` package to the root it lives in: src/ or gen/.

setuptools cannot merge one namespace package from two `where` roots on its own;
everything else about the distribution is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

# `flame` itself lives in src/: the SDK's top-level modules (`flame.config`,
# `flame.channel`, ...) sit there, as in the original SDK.
packages: list[str] = ["flame"]
package_dir: dict[str, str] = {"flame": "src/flame"}
for root in ("src", "gen"):
    for package in find_namespace_packages(root, include=["flame.*"]):
        packages.append(package)
        package_dir[package] = f"{root}/{package.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir)
