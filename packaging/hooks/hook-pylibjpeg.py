# pylibjpeg finds its decoders (libjpeg, openjpeg, rle) through package entry points,
# which PyInstaller cannot see: ship the distributions' metadata and their modules.
from importlib.metadata import PackageNotFoundError, distribution

from PyInstaller.utils.hooks import collect_dynamic_libs, copy_metadata

datas = []
hiddenimports = []
binaries = []
for dist_name in ("pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle"):
    try:
        dist = distribution(dist_name)
    except PackageNotFoundError:
        continue
    datas += copy_metadata(dist_name)
    for ep in dist.entry_points:
        module = ep.value.split(":")[0]
        hiddenimports.append(module)
        top = module.split(".")[0]
        hiddenimports.append(top)
        binaries += collect_dynamic_libs(top)
hiddenimports = sorted(set(hiddenimports))
