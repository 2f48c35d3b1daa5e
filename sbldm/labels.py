"""The tumour's labels and regions, defined once for every stage (and for ``plotting``,
which sits below the data stage).

sbldm's label maps use BraTS 2023's values: 0 background, 1 necrosis (necrotic /
non-enhancing core), 2 oedema, 3 enhancing tumour (BraTS 2021's 4 is mapped to 3 when a
segmentation is loaded: ``sbldm.data.cohort.brats_labels``). The BraTS evaluation regions
are nested: ET within TC within WT.
"""

#: sub-region labels of sbldm's label maps (BraTS 2023 values)
NECROSIS, OEDEMA, ENHANCING = 1, 2, 3
LABEL_NAMES = {NECROSIS: "necrosis", OEDEMA: "oedema", ENHANCING: "enhancing"}
#: BraTS evaluation regions: the labels each one holds (nested: ET within TC within WT)
REGIONS = {"WT": (NECROSIS, OEDEMA, ENHANCING), "TC": (NECROSIS, ENHANCING), "ET": (ENHANCING,)}
#: label values a label map may hold in sbldm's convention
VALID_LABELS = (0, NECROSIS, OEDEMA, ENHANCING)
