"""``report.py``'s layers, each module importing only those below it:

- data and reading: ``refs`` (the paper's, the authors' and the reproduction's numbers),
  ``runs`` (run folders -> runs -> settings, with their summaries);
- analyses (numbers only): ``convergence`` (copying seeds at 99 %), ``paired`` (h-detach
  against vanilla of the same seed), ``transfer`` (which delays to set side by side),
  ``captioning`` (test metrics per setting, the caption-blind baseline);
- rendering: ``text`` (the words and table cells every renderer shares), ``standing`` (the
  copying runs in sentences), ``markdown`` (report.md's sections, the README blocks),
  ``figures`` (the PNGs).
"""
