#!/bin/sh
# Install Debian's dataset-fashion-mnist (IDX files under /usr/share/datasets/fashion-mnist/)
# when it is missing and apt-get is usable. Never fails: vaelab can also find the files
# elsewhere (--data-dir, $VAELAB_DATA, the cache), download them, or fall back to digits.
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ] || [ -f "$dir/train-images-idx3-ubyte" ]; then
    echo "Fashion-MNIST: found in $dir"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "Fashion-MNIST: not installed and no apt-get here; vaelab will look elsewhere or download it"
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "Fashion-MNIST: not installed, and apt-get needs root; run: sudo apt-get install dataset-fashion-mnist"
    exit 0
fi
echo "Fashion-MNIST: installing Debian's dataset-fashion-mnist"
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; then
    echo "Fashion-MNIST: installed in $dir"
else
    echo "Fashion-MNIST: apt-get could not install it; vaelab will look elsewhere or download it"
fi
exit 0
