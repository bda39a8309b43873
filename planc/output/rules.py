"""The rule catalogue: every diagnostic and obligation code with a short name and description.

SARIF lists these as `tool.driver.rules` (the code is the stable rule id); docs/diagnostics.md
explains each one at length with an example and the fix. A test fails when a code used in the
sources is missing here or there.
"""

from __future__ import annotations

# code -> (name, one-line description)
RULES: dict[str, tuple[str, str]] = {
    # P: reading and parsing a file
    "P001": ("UnreadableFile", "The file does not exist, is a directory or cannot be read."),
    "P002": ("InvalidUtf8", "The file is not valid UTF-8."),
    "P003": ("NulByte", "The file contains a NUL byte."),
    "P004": ("FileTooLarge", "The file is larger than the 256 KiB limit for a plan."),
    "P005": ("NoPlanFiles", "No .plan files were found under the paths given."),
    "P006": ("LineTooLong", "A line is longer than 10,000 characters."),
    "P100": ("UnexpectedCharacter", "A character that cannot start any token."),
    "P101": ("UnexpectedToken", "A token the grammar does not allow here."),
    "P102": ("UnexpectedEndOfFile", "The file ends inside a block or statement."),
    "P103": ("UnknownBlockKind", "A block starts with a word that is not a block kind."),
    "P104": ("NestedBlock", "A block starts inside another block."),
    "P105": ("NoInclude", "An include/import statement: a .plan file is self-contained."),
    "P106": ("NotANumber", "nan or inf where a number is expected."),
    "P107": ("NumberOutOfRange", "A number with too many digits or too large an exponent."),
    "P110": ("BadBlockHeader", "A block needs a kind, a name and '{'."),
    "P111": ("MissingValue", "A key has no value on its line."),
    "P112": ("SeveralValues", "A line holds more than one value or statement."),
    "P113": ("BadMeshAxis", "A mesh axis needs `name=SIZE`."),
    "P114": ("BadShard", "A shard line needs `DIM[, DIM] over AXIS[, AXIS]`."),
    "P115": ("BadRequire", "A require line needs `METRIC OP VALUE`."),
    "P116": ("BadStageRange", "Stage ranges are written `[FIRST..LAST]`."),
    # E: names, units and structure (resolve, check_structure, the CLI)
    "E001": ("DuplicateBlock", "Two blocks of one kind have the same name."),
    "E002": ("UnknownDevice", "A device name is neither declared nor a preset."),
    "E003": ("UnknownReference", "A plan names a model, cluster or workload that is not declared."),
    "E004": ("NoSuchPlan", "The plan named by --plan is not in the file, or none was chosen."),
    "E005": ("NoBlocks", "The file holds no blocks at all (empty or only comments)."),
    "E010": ("StatementOutsidePlan", "A plan statement appears in another kind of block."),
    "E011": ("SetTwice", "A key, mesh, link or objective is set twice."),
    "E012": ("UnknownKey", "A key the block kind does not take."),
    "E013": ("MissingKey", "A required key is missing from a block."),
    "E014": ("ExpertsNeedMixtral", "`experts` or `top_k` in a model whose arch is not mixtral."),
    "E015": ("HeadDimNotDerivable", "hidden is not divisible by heads and head_dim is not set."),
    "E016": ("TopKTooLarge", "top_k is larger than the number of experts."),
    "E017": ("DecodeNeedsVocab", "A decode workload with a model that has no `vocab`."),
    "E018": ("HeadsNotMultipleOfKvHeads", "heads must be a multiple of kv_heads (GQA groups)."),
    "E056": ("HeadDimWithSeq", "head_dim and seq cannot both be split."),
    "E020": ("HoleNotAllowed", "A `?` hole where planc cannot choose a value."),
    "E021": ("WrongValueShape", "A key takes another kind of value."),
    "E022": ("NotWhole", "A count or byte size is not a whole number."),
    "E023": ("TooSmall", "A value is below its minimum (zero or negative)."),
    "E024": ("TooLarge", "A value is larger than any real model or device."),
    "E025": ("UnknownName", "A name value (arch, dtype, phase, attention) is not one planc knows."),
    "E026": ("MissingUnit", "A quantity needs a unit."),
    "E027": ("WrongUnit", "A unit is unknown or of the wrong dimension."),
    "E030": ("DuplicateAxis", "A mesh axis is listed twice."),
    "E031": ("UnknownCompression", "A compress line planc does not support."),
    "E032": ("UnknownObjective", "minimize/maximize names something it cannot optimise."),
    "E033": ("AxisNotInMesh", "A shard line uses an axis the mesh does not declare."),
    "E034": ("UnknownDimension", "A shard line names a dimension outside the vocabulary."),
    "E035": ("ShardedTwice", "A dimension is sharded on two lines."),
    "E036": ("MisplacedOption", "A shard option on a line that does not shard its dimension."),
    "E037": ("StageRangeReversed", "A stage range ends before it starts."),
    "E040": ("UnknownMetric", "A require line names an unknown metric."),
    "E041": ("MetricUnitMismatch", "A require value has the wrong kind of unit for its metric."),
    "E042": ("OneSidedLimit", "A performance claim is written in the direction no bound limits."),
    "E050": ("IncompatibleAxis", "One mesh axis carries dimensions of different strategies."),
    "E052": ("KvHeadsApart", "kv_heads is split differently from heads."),
    "E053": ("ExpertsWithoutMoe", "`shard experts` on a model without experts."),
    "E054": ("ExpertsWithoutBatch", "Expert parallelism without the batch split over its axes."),
    "E055": ("MultiAxisPipeline", "layers or seq split over more than one axis."),
    "E091": ("HolesNotFilled", "A command that needs concrete values got a plan with holes."),
    "E092": ("HolesInfeasible", "No values for the holes satisfy the plan's lines together."),
    "E093": ("HolesNothingFits", "No assignment of the holes fits memory, cache or claims."),
    # W: warnings
    "W005": ("NoPlan", "The file declares blocks but no plan: nothing is verified."),
    "W051": ("IdleAxis", "A mesh axis carries no dimension: its devices repeat the same work."),
    "W101": ("IdleDevices", "The mesh uses fewer devices than the cluster has."),
    # V: obligations proved or refuted by the verifier
    "V100": ("DeviceCount", "The mesh needs no more devices than the cluster has."),
    "V201": ("HeadsDivisible", "heads divides evenly over its axes."),
    "V202": ("KvHeadsDivisible", "kv_heads divides evenly over its axes."),
    "V203": ("HeadDimDivisible", "head_dim divides evenly over its axes."),
    "V204": ("FfnDivisible", "ffn divides evenly over its axes."),
    "V205": ("ExpertsDivisible", "experts divides evenly over its axes."),
    "V206": ("BatchDivisible", "batch divides evenly over its axes."),
    "V207": ("SeqDivisible", "seq divides evenly over its axis (twice for a zig-zag ring)."),
    "V208": ("LayersDivisible", "layers divides evenly over the pipeline axis."),
    "V209": ("MicrobatchesDivide", "The local batch splits into the microbatches."),
    "V300": ("Coverage", "Every index of a split dimension is owned by exactly one shard."),
    "V301": ("StageCoverage", "Explicit stages cover the layers once, in order."),
    "V310": ("RopePairing", "A head_dim split keeps RoPE pairs on one device."),
    "V400": ("HbmCapacity", "A device class's peak memory fits the device's HBM."),
    "V401": ("MemoryRequirement", "A device class's peak memory meets `require memory`."),
    "V500": ("CacheCapacity", "A fit-cache stage's resident working set fits L2."),
    "R003": ("RuntimeRefusal", "The runtime cannot run a plan the verifier proved."),
    "V211": ("SparseWidth", "2:4 sparsity needs the MLP's local input widths divisible by 8."),
    "V600": ("Claim", "A claimed size or count (`require params == ...`) matches the model."),
    "V700": ("ThroughputBound", "A performance claim is within the physical upper bound."),
    # U: usage and planc itself
    "U001": ("UsageError", "Bad command-line flags or arguments."),
    "U002": ("InternalError", "planc failed: a bug in planc, not in the plan."),
    "U003": ("CannotWrite", "An output file (-o, fmt) cannot be written."),
    # R: running a plan
    "R001": ("RunFailed", "The launched program failed, timed out or lost a rank."),
    "R002": ("Environment", "The environment lacks something a command needs (torch, GPUs)."),
}


def rule(code: str) -> tuple[str, str]:
    """(name, description) of a code; unknown codes (a newer planc) get a generic entry."""
    return RULES.get(code, (f"Code{code}", f"planc diagnostic {code}."))
