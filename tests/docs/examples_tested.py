"""Checks that every C++ example in the documentation is a program the test suite builds and runs.

    python3 tests/docs/examples_tested.py SOURCE_DIR      # the project's top folder
    python3 tests/docs/examples_tested.py --self-test     # the checker on pages made to fail it

A page may show C++ only through `.. literalinclude::` of a file that is built and run as a test:
docs/examples/NAME.cpp listed in MP_DOC_EXAMPLES of docs/examples/CMakeLists.txt, or
examples/NAME.cpp listed in MP_EXAMPLES of examples/CMakeLists.txt (headers under include/ may be
shown too: the library compiles them). It fails on
- a `.. code-block::` (`.. code::`, `.. sourcecode::`) whose language is C or C++, or that names no
  language while the page's highlight language is C++ (conf.py's highlight_language, or the last
  `.. highlight::` of the page);
- a `::` literal block while the page's highlight language is C++ (write shell or output as
  `.. code-block:: sh` / `text`);
- a literalinclude of C++ that is not one of the tested files above, or whose start-after /
  end-before marker is not in the file;
- a file in docs/examples/ missing from MP_DOC_EXAMPLES (so never built), a listed name without its
  file, or an example whose main does not call mp::freeze_support(argc, argv).
"""
import os
import re
import sys
import tempfile

CPP_LANGUAGES = {'cpp', 'c++', 'c', 'cxx', 'cc', 'hpp'}
CPP_SUFFIXES = ('.cpp', '.cc', '.cxx', '.hpp', '.h')
DIRECTIVE = re.compile(r'^(\s*)\.\.\s+([\w:-]+)::\s*(.*?)\s*$')
OPTION = re.compile(r'^\s*:([\w-]+):\s*(.*?)\s*$')


def cmake_list(path, variable):
    """The names of `set(VARIABLE a b c)` in a CMakeLists.txt (empty when the file is absent)."""
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        text = re.sub(r'#.*', '', f.read())
    m = re.search(r'set\(\s*' + variable + r'\s+([^)]*)\)', text)
    return set(m.group(1).split()) if m else set()


def conf_highlight(docs):
    path = os.path.join(docs, 'conf.py')
    if os.path.exists(path):
        with open(path) as f:
            m = re.search(r'''^highlight_language\s*=\s*['"]([^'"]+)['"]''', f.read(), re.M)
        if m:
            return m.group(1).lower()
    return 'default'  # Sphinx's default: Python, or plain text when it does not parse


def indent_of(line):
    return len(line) - len(line.lstrip())


def block_end(lines, start, base_indent):
    """The index after the indented body that starts below lines[start - 1] (blank lines included)."""
    j = start
    while j < len(lines) and (not lines[j].strip() or indent_of(lines[j]) > base_indent):
        j += 1
    return j


def options_of(lines, start, base_indent):
    opts = {}
    j = start
    while j < len(lines) and lines[j].strip() and indent_of(lines[j]) > base_indent:
        m = OPTION.match(lines[j])
        if not m:
            break
        opts[m.group(1)] = m.group(2)
        j += 1
    return opts


def check(root):
    docs = os.path.join(root, 'docs')
    doc_examples = os.path.join(docs, 'examples')
    tested = {}
    for folder, variable in ((doc_examples, 'MP_DOC_EXAMPLES'), (os.path.join(root, 'examples'), 'MP_EXAMPLES')):
        for name in cmake_list(os.path.join(folder, 'CMakeLists.txt'), variable):
            tested[os.path.realpath(os.path.join(folder, name + '.cpp'))] = name
    problems = []

    # The examples themselves: listed, present, and starting as every program of the library must.
    listed = cmake_list(os.path.join(doc_examples, 'CMakeLists.txt'), 'MP_DOC_EXAMPLES')
    present = set()
    if os.path.isdir(doc_examples):
        present = {f[:-4] for f in os.listdir(doc_examples) if f.endswith('.cpp')}
    for name in sorted(present - listed):
        problems.append(f'docs/examples/{name}.cpp is not in MP_DOC_EXAMPLES, so it is never built or run')
    for name in sorted(listed - present):
        problems.append(f'MP_DOC_EXAMPLES lists {name}, but docs/examples/{name}.cpp does not exist')
    for name in sorted(present & listed):
        with open(os.path.join(doc_examples, name + '.cpp')) as f:
            if 'mp::freeze_support(argc, argv)' not in f.read():
                problems.append(f'docs/examples/{name}.cpp: main does not call mp::freeze_support(argc, argv)')

    default_language = conf_highlight(docs)
    pages = []
    for folder, dirs, files in os.walk(docs):
        dirs[:] = [d for d in dirs if not d.startswith(('_', '.')) and d != 'examples']
        pages += [os.path.join(folder, f) for f in files if f.endswith('.rst')]
    blocks = includes = 0
    for page in sorted(pages):
        rel = os.path.relpath(page, root)
        with open(page) as f:
            lines = f.read().split('\n')
        language = default_language
        i = 0
        while i < len(lines):
            line = lines[i]
            m = DIRECTIVE.match(line)
            if m:
                base, name, arg = len(m.group(1)), m.group(2).lower(), m.group(3)
                if name == 'highlight':
                    language = arg.lower()
                elif name in ('code-block', 'code', 'sourcecode'):
                    blocks += 1
                    lang = (arg or language).lower()
                    if lang in CPP_LANGUAGES:
                        problems.append(f'{rel}:{i + 1}: a `.. {name}:: {arg}` C++ block; make it a program in '
                                        'docs/examples/ and show it with literalinclude')
                    i = block_end(lines, i + 1, base)
                    continue
                elif name == 'literalinclude':
                    includes += 1
                    opts = options_of(lines, i + 1, base)
                    target = os.path.normpath(os.path.join(docs, arg.lstrip('/')) if arg.startswith('/')
                                              else os.path.join(os.path.dirname(page), arg))
                    is_cpp = target.endswith(CPP_SUFFIXES) or opts.get('language', language).lower() in CPP_LANGUAGES
                    real = os.path.realpath(target)
                    if is_cpp and real not in tested and not real.startswith(os.path.realpath(os.path.join(root, 'include')) + os.sep):
                        problems.append(f'{rel}:{i + 1}: literalinclude of {arg}, which is not a tested example '
                                        '(docs/examples/ listed in MP_DOC_EXAMPLES, or examples/ in MP_EXAMPLES)')
                    elif os.path.exists(target):
                        with open(target) as f:
                            text = f.read()
                        for key in ('start-after', 'end-before', 'start-at', 'end-at'):
                            if key in opts and opts[key] not in text:
                                problems.append(f'{rel}:{i + 1}: marker {opts[key]!r} is not in {arg}')
                    else:
                        problems.append(f'{rel}:{i + 1}: literalinclude of {arg}, which does not exist')
                    i = block_end(lines, i + 1, base)
                    continue
                i += 1
                continue
            # A paragraph ending in '::' (not a comment or directive) opens a literal block below it.
            stripped = line.rstrip()
            if stripped.endswith('::') and not stripped.lstrip().startswith('..'):
                j = i + 1
                while j < len(lines) and not lines[j].strip():
                    j += 1
                if j < len(lines) and indent_of(lines[j]) > indent_of(line):
                    blocks += 1
                    if language in CPP_LANGUAGES:
                        problems.append(f'{rel}:{i + 1}: a `::` literal block, highlighted as C++ on this page; '
                                        'C++ goes in docs/examples/ (literalinclude), anything else in '
                                        '`.. code-block:: sh` or `text`')
                    i = block_end(lines, j, indent_of(line))
                    continue
            i += 1
    return problems, blocks, includes, len(tested)


def self_test():
    """The checker fails on each kind of untested block and passes on a clean tree."""
    def tree(page, examples=('ok',), listed=('ok',), body='int main(int argc, char** argv) { mp::freeze_support(argc, argv); }'):
        root = tempfile.mkdtemp(prefix='examples_tested_')
        os.makedirs(os.path.join(root, 'docs', 'examples'))
        with open(os.path.join(root, 'docs', 'conf.py'), 'w') as f:
            f.write("highlight_language = 'cpp'\n")
        with open(os.path.join(root, 'docs', 'page.rst'), 'w') as f:
            f.write(page)
        for name in examples:
            with open(os.path.join(root, 'docs', 'examples', name + '.cpp'), 'w') as f:
                f.write('// doc:begin\n' + body + '\n// doc:end\n')
        with open(os.path.join(root, 'docs', 'examples', 'CMakeLists.txt'), 'w') as f:
            f.write('set(MP_DOC_EXAMPLES\n  ' + '\n  '.join(listed) + '\n)\n')
        return root

    good = ('Title\n=====\n\n.. literalinclude:: examples/ok.cpp\n   :start-after: doc:begin\n'
            '   :end-before: doc:end\n\nShell:\n\n.. code-block:: sh\n\n   cmake --build build::\n\n'
            '.. highlight:: none\n\nOutput::\n\n   a line\n')
    cases = {
        'a clean page': (tree(good), False),
        'a code-block cpp': (tree(good + '\n.. code-block:: cpp\n\n   int x = 1;\n'), True),
        'a code-block c++ inside a directive': (tree('.. note::\n\n   .. code-block:: c++\n\n      f();\n'), True),
        'a code-block with the default language': (tree('.. code-block::\n\n   f();\n'), True),
        'a :: block under the C++ default': (tree('Example::\n\n   f();\n'), True),
        'an include of an untested file': (tree('.. literalinclude:: examples/other.cpp\n', examples=('ok', 'other')), True),
        'a missing marker': (tree('.. literalinclude:: examples/ok.cpp\n   :start-after: nowhere\n'), True),
        'an example left out of the list': (tree(good, examples=('ok', 'extra')), True),
        'an example without freeze_support': (tree(good, body='int main() {}'), True),
    }
    failures = 0
    for what, (root, should_fail) in cases.items():
        problems = check(root)[0]
        if bool(problems) != should_fail:
            failures += 1
            print(f'self-test: {what}: expected {"problems" if should_fail else "none"}, got {problems}')
    print(f'self-test: {len(cases) - failures}/{len(cases)} cases as expected')
    return 1 if failures else 0


def main():
    if sys.argv[1:] == ['--self-test']:
        return self_test()
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    problems, blocks, includes, tested = check(sys.argv[1])
    for p in problems:
        print(p)
    print(f'{includes} literalincludes, {blocks} other code blocks, {tested} tested example programs; '
          f'{len(problems)} problems')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
