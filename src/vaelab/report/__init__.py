"""Everything vaelab shows: image grids and PNGs (`images`), the figures of a run in one version for its
images/ folder and the HTML page (`figures`), matplotlib plots (`plots`), the files of an evaluation
(`evaluation`, `markdown`) and the self-contained HTML report of a run (`html`).

It imports data, models, runs and evaluation, never training, serve or the command line. Nothing is
imported here, so that `import vaelab.report.images` does not load matplotlib.
"""
