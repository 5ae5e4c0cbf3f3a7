"""Package-level promises of the README, each checked in a fresh interpreter."""
import subprocess
import sys


def test_import_vitkd_registers_its_architectures_in_timm():
    code = ("import timm, vitkd\n"
            "m = timm.create_model('minivit_deit_tiny_patch16_224', num_classes=3)\n"
            "print(type(m).__name__, timm.is_model('vit_digits_small'), timm.is_model('rednet_digits'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr.strip().splitlines()[-1:]
    assert out.stdout.split() == ["MiniVisionTransformer", "True", "True"]
