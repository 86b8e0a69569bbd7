import json, sys, time
import torch
from vaelab import load_run, load_run_data
from vaelab.data import eval_view
from vaelab.evaluation.likelihood import estimate_nll
torch.set_num_threads(int(sys.argv[2]))
run = load_run(sys.argv[1])
splits = load_run_data(run, "/usr/share/datasets/fashion-mnist")
dc = run.config.data
test = eval_view(splits.test, "test", dc.binarize, dc.binarize_seed)
t = time.time()
s, _ = estimate_nll(run.model, test.images, likelihood=run.config.model.likelihood, binarize=dc.binarize,
                    binarize_seed=dc.binarize_seed, k=1000, batch_size=64, seed=run.config.eval.seed)
out = {"run": sys.argv[1], "epoch": run.meta.get("epoch"), "seconds": time.time() - t, **s.as_dict()}
print(json.dumps(out, indent=1)[:600])
open(sys.argv[3], "w").write(json.dumps(out, indent=2) + "\n")
