"""The quickstart notebook runs top to bottom (shortened by BWLM_NOTEBOOK_SMALL) and shows the comparison."""

import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
  monkeypatch.setenv('BWLM_NOTEBOOK_SMALL', '1')
  monkeypatch.setenv('BWLM_NOTEBOOK_WORKDIR', str(tmp_path / 'run'))
  notebook = nbformat.read(os.path.join(ROOT, 'notebooks', 'quickstart.ipynb'), as_version=4)
  NotebookClient(notebook, timeout=900, kernel_name='python3',
                 resources={'metadata': {'path': os.path.join(ROOT, 'notebooks')}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == 'code' for o in cell.get('outputs', [])]
  text = ''.join(o.get('text', '') for o in outputs)
  assert 'Many Medium    Few    All' in text and 'BWLM' in text
  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(images) == 4  # class counts, per-class accuracy, weight norms, training curves
  assert os.path.exists(tmp_path / 'run' / 'results.json')
