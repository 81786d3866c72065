"""Run a recbole_ext model (or any RecBole model) with RecBole's flags.

    python run_recbole_ext.py --model=TedRec --dataset=ml-100k --epochs=5
    python run_recbole_ext.py --model=SASRec --config_files="a.yaml b.yaml" --learning_rate=1e-3
    python run_recbole_ext.py --model=TedRec --nproc=2          # DDP (NCCL on GPU, gloo on CPU)
"""

from recbole_ext.quick_start import main

if __name__ == "__main__":
    main()
