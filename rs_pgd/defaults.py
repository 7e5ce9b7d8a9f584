"""Default values of the training and prediction options, defined once.

:class:`rs_pgd.config.FitConfig` takes its defaults from here and the CLI shows these same values. Plain constants:
importing this module imports nothing else (``rio`` imports every plugin's options at start-up).
"""

ARCH = "Unet"
ENCODER = "resnet34"
TILE = 256
MARGIN = 64
BATCH_SIZE = 4
EPOCHS = 40
MAX_MINUTES = None
LR = 1e-3
WEIGHT_DECAY = 1e-4
OPTIMIZER = "adamw"
OPTIMIZERS = ("adamw", "sgd")
MOMENTUM = 0.9
STEP_EVERY = "auto"
STEP_EVERY_NAMES = ("auto", "scene")
AUTO_MIN_STEPS = 400
"""``--step-every auto``: the largest groups that still give a run of ``--epochs`` this many optimizer steps."""
WARMUP = 0.05
"""Share of the planned optimizer steps over which the learning rate rises linearly before the cosine decay."""
PATIENCE = 10
"""Early stopping: validations (epochs) without a better validation mIoU before the run stops; 0 never stops."""
RESUME_EVERY_MINUTES = 5.0
CLASS_WEIGHTS = "auto"
CLASS_WEIGHT_NAMES = ("auto", "none")
CLASS_WEIGHT_POWER = 0.5
"""``--class-weights auto``: weight of class k proportional to (its share of the training pixels) ** -power."""
CLASS_WEIGHT_MAX = 10.0
"""``--class-weights auto``: no class weighs more than this (the pixel-weighted mean weight is 1)."""
WEIGHTING = "uniform"
WEIGHTINGS = ("uniform", "position", "loss")
NORM = "batch"
NORMS = ("frozen", "batch", "group")
PRECISION = "auto"
PRECISIONS = ("auto", "32", "bf16", "16-mixed")
VAL_FRACTION = 0.2
SEED = 0
DEVICE = "auto"
THREADS = "auto"
STATS_WINDOWS = 64

# prediction (rs_pgd.predict and rs-pgd predict; the window geometry comes from the checkpoint)
BLEND = "none"
BLENDS = ("none", "linear", "cosine")
PROBABILITY_DTYPE = "uint8"
PROBABILITY_DTYPES = ("uint8", "float32")
BBOX_CRS = "EPSG:4326"
UNCERTAINTY_KIND = "least-confidence"
UNCERTAINTY_KINDS = ("least-confidence", "margin", "entropy")

# suggest (rs_pgd.suggest and rs-pgd suggest)
SUGGEST_TOP = 10
SUGGEST_SIZE = 256
SUGGEST_LABELLED_WEIGHT = 1.0
SUGGEST_MIN_VALID = 0.5
