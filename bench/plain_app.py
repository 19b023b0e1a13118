"""What a user would write instead of Ray Serve: one FastAPI process holding the same model.

Run by bench/serve.py as ``uvicorn plain_app:app`` with ``LCH_BENCH_MODEL_URI`` set.
"""

import os

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from lch.registry import load_lch_model
from lch.serving import contract

model = load_lch_model(os.environ["LCH_BENCH_MODEL_URI"])
app = FastAPI()


@app.post("/v1/classify")
async def classify(request: Request):
    try:
        data = contract.parse_json(await request.body())
        crops = contract.request_crops(data, model.config.crop_size, "crops")
    except contract.RequestError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)
    with torch.inference_mode():
        p = model(torch.from_numpy(crops)[:, None]).numpy()
    return contract.ClassifyResponse(
        model_version="plain",
        cells=[contract.Cell(index=i, p_high=float(v)) for i, v in enumerate(p)],
        population=contract.population(np.asarray(p)),
    )
