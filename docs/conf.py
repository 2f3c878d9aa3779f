# Sphinx configuration of the multiprocessing for C++ documentation.
project = 'multiprocessing for C++'
author = 'the multiprocessing developers'
copyright = '2026, the multiprocessing developers'
release = '0.1.0'
extensions = []
primary_domain = 'cpp'
highlight_language = 'cpp'
html_theme = 'alabaster'
exclude_patterns = ['_build']
