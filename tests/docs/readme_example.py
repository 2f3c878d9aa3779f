"""Checks that the README's "A first program" block is examples/first_program.cpp, word for word,
and that the built program exits 0 printing what its comment promises: the program a reader
copies is one the suite builds and runs.

    python3 tests/docs/readme_example.py SOURCE_DIR FIRST_PROGRAM_BINARY
"""
import pathlib
import re
import subprocess
import sys


def main():
    root = pathlib.Path(sys.argv[1])
    readme = (root / 'README.md').read_text()
    m = re.search(r'## A first program\n\n```cpp\n(.*?)```', readme, re.S)
    if not m:
        print('README.md: no "## A first program" section with a cpp block')
        return 1
    program = (root / 'examples' / 'first_program.cpp').read_text()
    if m.group(1) != program:
        print('README.md\'s first program differs from examples/first_program.cpp: copy one onto the other')
        return 1
    run = subprocess.run([sys.argv[2]], stdout=subprocess.PIPE, text=True, timeout=60)
    if run.returncode != 0 or run.stdout != 'hello world from Process-1\n':
        print(f'first_program exited {run.returncode} and printed {run.stdout!r}')
        return 1
    print('README.md\'s first program is examples/first_program.cpp, and it prints', run.stdout.strip())
    return 0


if __name__ == '__main__':
    sys.exit(main())
